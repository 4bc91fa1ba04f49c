"""Extreme inputs give finite, exact-as-possible values and no floating-point warnings."""

import warnings

import numpy as np
import pytest

from workers.nn import Network
from workers.nn.activations import apply_activation


@pytest.fixture
def strict_floats():
    """Turn every numpy floating-point event and every warning into an error."""
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        yield


def _single_layer(weights: list[list[float]], activation: str, loss: str, dtype) -> tuple:
    net = Network([len(weights), len(weights[0])], [activation], loss)
    flat = np.zeros(net.num_params, dtype=dtype)
    net.named_parameters(flat)["layer_0_weight"][...] = weights
    return net, flat


@pytest.mark.usefixtures("strict_floats")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_huge_logits_give_finite_cross_entropy_and_gradient(dtype: type) -> None:
    """Logits of +-1e4 give loss 0 for the right class, 2e4 for the wrong one, finite gradients."""
    net, flat = _single_layer([[1e4, -1e4, 0.0]], "identity", "softmax_cross_entropy", dtype)
    x = np.ones((2, 1), dtype=dtype)  # both rows have logits [1e4, -1e4, 0]
    grad = np.empty_like(flat)
    loss = net.loss_and_grad(flat, x, np.array([0, 1]), grad)
    assert loss == pytest.approx(2e4)
    assert net.evaluate(flat, x[:1], np.array([0]))[0] == 0.0
    weight_grad = net.named_parameters(grad)["layer_0_weight"]
    np.testing.assert_array_equal(weight_grad, [[1.0, -1.0, 0.0]])  # (1 - 1) + (1 - 0), ...


@pytest.mark.usefixtures("strict_floats")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_of_huge_inputs_saturates_without_overflow(dtype: type) -> None:
    """Sigmoid of +-1e4 is exactly 1 and 0, and its gradient is finite (exactly zero)."""
    net, flat = _single_layer([[1e4, -1e4]], "sigmoid", "mean_squared_error", dtype)
    x = np.ones((1, 1), dtype=dtype)
    np.testing.assert_array_equal(net.forward(flat, x), [[1.0, 0.0]])
    grad = np.empty_like(flat)
    loss = net.loss_and_grad(flat, x, np.array([[0.0, 1.0]]), grad)
    assert loss == 1.0 and np.isfinite(grad).all() and not grad.any()


@pytest.mark.usefixtures("strict_floats")
def test_sigmoid_is_accurate_in_both_tails() -> None:
    """Sigmoid keeps full relative precision for very negative inputs (no 1 - 1 cancellation)."""
    z = np.array([-30.0, -5.0, 0.0, 5.0, 30.0])
    expected = 1.0 / (1.0 + np.exp(-z))
    np.testing.assert_allclose(apply_activation("sigmoid", z), expected, rtol=1e-15)
    z32 = z.astype(np.float32)
    np.testing.assert_allclose(apply_activation("sigmoid", z32), expected, rtol=1e-6)


@pytest.mark.usefixtures("strict_floats")
def test_tanh_and_relu_of_huge_inputs_are_finite() -> None:
    """Tanh and relu hidden layers fed +-1e4 give finite loss and gradients."""
    for hidden in ("tanh", "relu"):
        net = Network([1, 2, 2], [hidden, "identity"], "softmax_cross_entropy")
        flat = net.init_params(np.random.default_rng(0))
        x = np.array([[1e4], [-1e4]], dtype=np.float32)
        grad = np.empty_like(flat)
        loss = net.loss_and_grad(flat, x, np.array([0, 1]), grad)
        assert np.isfinite(loss) and np.isfinite(grad).all()


@pytest.mark.usefixtures("strict_floats")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("activation", ["softplus", "gelu", "elu", "leaky_relu", "sigmoid"])
def test_new_activations_of_huge_inputs_are_finite(activation: str, dtype: type) -> None:
    """Each activation fed +-1e4 gives finite outputs, loss and gradients without any warning."""
    net, flat = _single_layer([[1e4, -1e4]], activation, "mean_squared_error", dtype)
    x = np.ones((1, 1), dtype=dtype)
    assert np.isfinite(net.forward(flat, x)).all()
    grad = np.empty_like(flat)
    loss = net.loss_and_grad(flat, x, np.array([[0.0, 1.0]]), grad)
    assert np.isfinite(loss) and np.isfinite(grad).all()


@pytest.mark.usefixtures("strict_floats")
def test_softplus_and_gelu_saturate_to_the_right_values() -> None:
    """softplus(+-1e4) is 1e4 and 0, gelu(+-1e4) is 1e4 and 0, elu(-1e4) is -1."""
    z = np.array([1e4, -1e4], dtype=np.float32)
    np.testing.assert_array_equal(apply_activation("softplus", z), [1e4, 0.0])
    np.testing.assert_array_equal(apply_activation("gelu", z), [1e4, 0.0])
    np.testing.assert_array_equal(apply_activation("elu", z), [1e4, -1.0])


@pytest.mark.usefixtures("strict_floats")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_binary_cross_entropy_of_huge_logits_is_exact_and_finite(dtype: type) -> None:
    """BCE of logits +-1e4 is 0 when right and 1e4 per output when wrong, with gradients 0 and +-1."""
    net, flat = _single_layer([[1e4, -1e4]], "identity", "binary_cross_entropy", dtype)
    x = np.ones((1, 1), dtype=dtype)
    grad = np.empty_like(flat)
    assert net.loss_and_grad(flat, x, np.array([[1.0, 0.0]]), grad) == 0.0
    assert not grad.any()
    assert net.loss_and_grad(flat, x, np.array([[0.0, 1.0]]), grad) == pytest.approx(2e4)
    np.testing.assert_array_equal(net.named_parameters(grad)["layer_0_weight"], [[1.0, -1.0]])


@pytest.mark.usefixtures("strict_floats")
def test_label_smoothed_cross_entropy_of_huge_logits_is_finite() -> None:
    """Label smoothing keeps cross-entropy of +-1e4 logits finite: the wrong classes cost s/k each."""
    net = Network([1, 3], ["identity"], "softmax_cross_entropy", label_smoothing=0.3)
    flat = np.zeros(net.num_params, dtype=np.float32)
    net.named_parameters(flat)["layer_0_weight"][...] = [[1e4, -1e4, 0.0]]
    grad = np.empty_like(flat)
    loss = net.loss_and_grad(flat, np.ones((1, 1), np.float32), np.array([0]), grad)
    assert loss == pytest.approx(0.1 * 2e4 + 0.1 * 1e4, rel=1e-5)
    assert np.isfinite(grad).all()


@pytest.mark.parametrize("dtype", [np.uint8, np.float64, np.int64])
def test_inputs_of_any_dtype_are_converted_before_arithmetic(dtype: type) -> None:
    """uint8, int64 and float64 inputs give exactly the float32 result: converted first, never wrapped."""
    net = Network([3, 4, 2], ["relu", "identity"], "softmax_cross_entropy")
    flat = net.init_params(np.random.default_rng(0))
    x = np.array([[255, 0, 200], [17, 250, 3]])
    expected = net.forward(flat, x.astype(np.float32))
    np.testing.assert_array_equal(net.forward(flat, x.astype(dtype)), expected)
    grad, reference = np.empty_like(flat), np.empty_like(flat)
    net.loss_and_grad(flat, x.astype(dtype), np.array([0, 1]), grad)
    net.loss_and_grad(flat, x.astype(np.float32), np.array([0, 1]), reference)
    assert grad.dtype == np.float32 and np.array_equal(grad, reference)


def test_non_finite_loss_and_gradient_are_detected() -> None:
    """Parameters that overflow give a non-finite loss, which the engine returns rather than hides."""
    net = Network([2, 2], ["identity"], "mean_squared_error")
    flat = np.full(net.num_params, 3e38, dtype=np.float32)
    grad = np.empty_like(flat)
    with np.errstate(all="ignore"):
        loss = net.loss_and_grad(flat, np.ones((1, 2), np.float32), np.zeros((1, 2), np.float32), grad)
    assert not np.isfinite(loss) and not np.isfinite(grad).all()
