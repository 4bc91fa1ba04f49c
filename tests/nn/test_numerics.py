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
