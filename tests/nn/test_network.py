"""Network layout, initialisation, forward values, dtypes and edge cases."""

import numpy as np
import pytest

from workers.nn import Network, add_sums, summarize
from workers.nn.metrics import metric_sums


def _mlp() -> Network:
    return Network([784, 256, 128, 10], ["relu", "relu", "identity"], "softmax_cross_entropy")


def test_num_params_counts_weights_and_biases() -> None:
    """784-256-128-10 has 784*256+256 + 256*128+128 + 128*10+10 parameters."""
    assert _mlp().num_params == 784 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10 == 235_146


def test_named_parameters_are_views_into_the_flat_vector() -> None:
    """Named weights and biases have layer shapes and writing one changes the flat vector."""
    net = Network([3, 4, 2], ["tanh", "identity"], "softmax_cross_entropy")
    flat = np.zeros(net.num_params, dtype=np.float32)
    named = net.named_parameters(flat)
    shapes = {name: view.shape for name, view in named.items()}
    assert shapes == {
        "layer_0_weight": (3, 4),
        "layer_0_bias": (4,),
        "layer_1_weight": (4, 2),
        "layer_1_bias": (2,),
    }
    named["layer_1_bias"][1] = 7.0
    assert flat[-1] == 7.0 and all(np.shares_memory(view, flat) for view in named.values())


def test_init_params_he_normal_for_relu_and_glorot_uniform_otherwise() -> None:
    """Relu weights have std sqrt(2/fan_in), tanh ones lie in +-sqrt(6/(in+out)), biases are 0."""
    net = Network([400, 300, 200], ["relu", "tanh"], "softmax_cross_entropy")
    named = net.named_parameters(net.init_params(np.random.default_rng(0)))
    assert named["layer_0_weight"].dtype == np.float32
    assert abs(named["layer_0_weight"].std() / np.sqrt(2 / 400) - 1) < 0.01
    limit = np.sqrt(6 / (300 + 200))
    glorot = named["layer_1_weight"]
    assert np.abs(glorot).max() <= limit and abs(glorot.std() / (limit / np.sqrt(3)) - 1) < 0.02
    assert not named["layer_0_bias"].any() and not named["layer_1_bias"].any()


def test_init_params_is_reproducible_and_follows_dtype() -> None:
    """The same seed gives the same parameters; float64 is honoured."""
    net = Network([5, 3], ["sigmoid"], "mean_squared_error")
    first = net.init_params(np.random.default_rng(4), np.float64)
    second = net.init_params(np.random.default_rng(4), np.float64)
    assert first.dtype == np.float64 and np.array_equal(first, second)


def test_forward_matches_a_direct_numpy_computation() -> None:
    """forward computes tanh(x W0 + b0) W1 + b1."""
    net = Network([3, 4, 2], ["tanh", "identity"], "softmax_cross_entropy")
    rng = np.random.default_rng(0)
    flat = net.init_params(rng, np.float64) + 0.1
    x = rng.standard_normal((5, 3))
    p = net.named_parameters(flat)
    hidden = np.tanh(x @ p["layer_0_weight"] + p["layer_0_bias"])
    expected = hidden @ p["layer_1_weight"] + p["layer_1_bias"]
    np.testing.assert_allclose(net.forward(flat, x), expected, rtol=1e-12)


def test_loss_and_grad_overwrites_instead_of_accumulating() -> None:
    """Two calls with the same buffer leave the same gradient and return the same loss."""
    net = Network([3, 4, 2], ["relu", "identity"], "softmax_cross_entropy")
    rng = np.random.default_rng(0)
    flat, x, y = net.init_params(rng), rng.standard_normal((6, 3)), rng.integers(0, 2, 6)
    grad = np.full_like(flat, np.nan)
    first_loss = net.loss_and_grad(flat, x, y, grad)
    first_grad = grad.copy()
    assert net.loss_and_grad(flat, x, y, grad) == first_loss
    assert np.array_equal(grad, first_grad) and isinstance(first_loss, float)


@pytest.mark.parametrize("input_dtype", [np.uint8, np.float64, np.int64])
def test_inputs_are_converted_to_the_float32_params_dtype(input_dtype: type) -> None:
    """uint8, int64 and float64 inputs give float32 results equal to float32-converted inputs."""
    net = Network([4, 3], ["identity"], "softmax_cross_entropy")
    rng = np.random.default_rng(0)
    flat = net.init_params(rng)
    x = rng.integers(0, 255, size=(5, 4)).astype(input_dtype)
    y = rng.integers(0, 3, size=5)
    grad, reference_grad = np.empty_like(flat), np.empty_like(flat)
    loss = net.loss_and_grad(flat, x, y, grad)
    reference = net.loss_and_grad(flat, x.astype(np.float32), y, reference_grad)
    assert net.forward(flat, x).dtype == np.float32 and grad.dtype == np.float32
    assert loss == reference and np.array_equal(grad, reference_grad)


def test_float64_params_compute_in_float64() -> None:
    """With float64 params, float32 inputs give float64 outputs."""
    net = Network([4, 3], ["tanh"], "mean_squared_error")
    flat = net.init_params(np.random.default_rng(0), np.float64)
    x = np.ones((2, 4), dtype=np.float32)
    assert net.forward(flat, x).dtype == np.float64


def test_empty_batch_gives_zero_loss_and_zero_gradient() -> None:
    """n = 0 writes zeros into grad_out and returns loss 0.0 and 0 correct."""
    net = Network([4, 3], ["relu"], "softmax_cross_entropy")
    flat = net.init_params(np.random.default_rng(0))
    grad = np.full_like(flat, np.nan)
    loss = net.loss_and_grad(flat, np.empty((0, 4)), np.empty(0, dtype=np.int64), grad)
    assert loss == 0.0 and not grad.any()
    assert net.evaluate(flat, np.empty((0, 4)), np.empty(0, dtype=np.int64)) == (0.0, 0)


def test_evaluate_counts_argmax_hits_and_sums_losses() -> None:
    """evaluate returns the loss sum of loss_and_grad and the count of argmax == label."""
    net = Network([4, 5, 3], ["sigmoid", "identity"], "softmax_cross_entropy")
    rng = np.random.default_rng(2)
    flat, x, y = net.init_params(rng), rng.standard_normal((50, 4)), rng.integers(0, 3, 50)
    expected_correct = int((net.forward(flat, x).argmax(axis=1) == y).sum())
    loss, correct = net.evaluate(flat, x, y)
    assert correct == expected_correct
    assert loss == pytest.approx(net.loss_and_grad(flat, x, y, np.empty_like(flat)), rel=1e-6)


def test_mse_float_targets_of_shape_n_for_one_output() -> None:
    """MSE with one output accepts targets of shape (n,) and counts no correct predictions."""
    net = Network([2, 1], ["identity"], "mean_squared_error")
    flat = np.array([1.0, 2.0, 0.5], dtype=np.float32)  # z = x0 + 2 x1 + 0.5
    x = np.array([[1.0, 1.0], [0.0, 0.0]], dtype=np.float32)
    loss, correct = net.evaluate(flat, x, np.array([3.0, 0.0]))
    assert loss == pytest.approx(0.5**2 + 0.5**2) and correct == 0


def test_mse_integer_labels_are_one_hot_encoded() -> None:
    """MSE against label 1 of 2 outputs is mean((z - [0, 1])**2)."""
    net = Network([1, 2], ["identity"], "mean_squared_error")
    flat = np.array([0.0, 0.0, 3.0, 5.0], dtype=np.float64)  # z = [3, 5]
    loss, correct = net.evaluate(flat, np.zeros((1, 1)), np.array([1]))
    assert loss == pytest.approx((3.0**2 + 4.0**2) / 2) and correct == 1


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: Network([3, 2], ["swish"], "softmax_cross_entropy"),
            "Unknown activation: 'swish'",
        ),
        (lambda: Network([3, 2], ["relu"], "hinge"), "Unknown loss: 'hinge'"),
        (lambda: Network([3, 2], ["relu", "relu"], "mean_squared_error"), "need 1 activations"),
        (lambda: Network([3], [], "mean_squared_error"), "layer_sizes needs >= 2"),
    ],
)
def test_invalid_network_definitions_are_rejected(make: object, message: str) -> None:
    """Unknown names and mismatched lengths raise ValueError naming the value."""
    with pytest.raises(ValueError, match=message):
        make()


def test_invalid_call_arguments_are_rejected() -> None:
    """Wrong input width, out-of-range labels and a wrong-dtype grad buffer raise ValueError."""
    net = Network([3, 2], ["identity"], "softmax_cross_entropy")
    flat = net.init_params(np.random.default_rng(0))
    x, y = np.zeros((2, 3)), np.array([0, 1])
    with pytest.raises(ValueError, match=r"x must have shape \(n, 3\)"):
        net.loss_and_grad(flat, np.zeros((2, 4)), y, np.empty_like(flat))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\), got range \[0, 2\]"):
        net.loss_and_grad(flat, x, np.array([0, 2]), np.empty_like(flat))
    with pytest.raises(ValueError, match="grad_out must be a float32 array"):
        net.loss_and_grad(flat, x, y, np.empty(flat.shape, dtype=np.float64))
    with pytest.raises(ValueError, match="needs integer labels"):
        net.loss_and_grad(flat, x, np.array([0.0, 1.0]), np.empty_like(flat))


@pytest.mark.parametrize(
    ("initializer", "check"),
    [
        ("he_normal", lambda w, fi, fo: abs(w.std() - np.sqrt(2 / fi)) < 0.05 * np.sqrt(2 / fi)),
        ("he_uniform", lambda w, fi, fo: abs(w).max() <= np.sqrt(6 / fi) and w.std() > 0.9 * np.sqrt(2 / fi)),
        (
            "glorot_normal",
            lambda w, fi, fo: abs(w.std() - np.sqrt(2 / (fi + fo))) < 0.05 * np.sqrt(2 / (fi + fo)),
        ),
        ("glorot_uniform", lambda w, fi, fo: abs(w).max() <= np.sqrt(6 / (fi + fo))),
    ],
)
def test_each_initializer_draws_its_distribution(initializer: str, check) -> None:
    """Each selectable initialiser gives weights with its published scale; biases start at 0."""
    net = Network(
        [400, 300, 2], ["tanh", "identity"], "softmax_cross_entropy", initializers=[initializer, "auto"]
    )
    named = net.named_parameters(net.init_params(np.random.default_rng(0)))
    assert check(named["layer_0_weight"], 400, 300), initializer
    assert not named["layer_0_bias"].any()


def test_auto_initializer_is_he_for_relu_like_and_glorot_otherwise() -> None:
    """ "auto" resolves to he_normal for relu, leaky_relu, elu, gelu, softplus, else glorot_uniform."""
    activations = ["relu", "leaky_relu", "elu", "gelu", "softplus", "tanh", "sigmoid", "identity"]
    net = Network([2] * 9, activations, "mean_squared_error")
    assert net.initializers == ("he_normal",) * 5 + ("glorot_uniform",) * 3


def test_evaluate_sums_give_top_k_and_regression_metrics() -> None:
    """Summed metric sums of two halves give the metrics of the whole: top-k, MSE, MAE and R^2."""
    net = Network([3, 2], ["identity"], "mean_squared_error")
    rng = np.random.default_rng(2)
    flat = net.init_params(rng, np.float64)
    x, t = rng.standard_normal((20, 3)), rng.standard_normal((20, 2))
    halves = [net.evaluate_sums(flat, x[a:b], t[a:b])[1] for a, b in ((0, 7), (7, 20))]
    metrics = summarize(add_sums(add_sums(None, halves[0]), halves[1]), 2)
    z = net.forward(flat, x)
    residual, spread = ((z - t) ** 2).sum(), ((t - t.mean(axis=0)) ** 2).sum()
    assert metrics["mse"] == pytest.approx(np.mean((z - t) ** 2))
    assert metrics["mae"] == pytest.approx(np.mean(np.abs(z - t)))
    assert metrics["r2"] == pytest.approx(1 - residual / spread)
    logits = np.array([[0.1, 0.5, 0.2], [0.9, 0.0, 0.3]])
    classifier = Network([3, 3], ["identity"], "softmax_cross_entropy")
    weights = np.concatenate([np.eye(3).ravel(), np.zeros(3)])
    _, sums = classifier.evaluate_sums(weights, logits, np.array([2, 2]), top_k=2)
    assert (sums["correct"], sums["top_k_correct"]) == (0, 2)


def test_top_k_breaks_ties_toward_the_lower_index_like_argmax() -> None:
    """With tied outputs a label counts for top-k when it is among the first k of a stable
    descending order, so top-1 hits equal argmax hits."""
    z = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [2.0, 2.0, 2.0], [0.0, 3.0, 3.0]])
    labels = np.array([0, 1, 2, 2])
    hits = [metric_sums(z, labels, k)["top_k_correct"] for k in (1, 2, 3)]
    assert metric_sums(z, labels, 1)["correct"] == 1  # argmax picks index 0, 0, 0, 1
    assert hits == [1, 3, 4]


def test_top_k_matches_a_stable_sort_on_heavily_tied_outputs() -> None:
    """On random outputs with many ties, top-k hits equal a stable descending sort's for every k,
    and the top-1 hits equal the accuracy count."""
    rng = np.random.default_rng(5)
    z = rng.integers(0, 3, size=(200, 6)).astype(np.float32)
    labels = rng.integers(0, 6, size=200)
    order = np.argsort(-z, axis=1, kind="stable")
    for k in range(1, 7):
        expected = np.count_nonzero((order[:, :k] == labels[:, None]).any(axis=1))
        sums = metric_sums(z, labels, k)
        assert sums["top_k_correct"] == expected, k
        if k == 1:
            assert sums["top_k_correct"] == sums["correct"]


def _dropped_units(net: Network, flat: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    """What the second layer of ``[1, N, 1]`` reads for input 1: with its weights 0 and target 1,
    its weight gradient is ``dropped * dL/dz`` and its bias gradient ``dL/dz``."""
    grad = np.empty_like(flat)
    net.loss_and_grad(flat, np.ones((1, 1), flat.dtype), np.ones((1, 1), flat.dtype), grad, rng)
    named = net.named_parameters(grad)
    return named["layer_1_weight"][:, 0] / named["layer_1_bias"][0]


def test_dropout_drops_at_its_rate_scales_kept_units_and_is_identity_at_eval() -> None:
    """In training, dropout 0.3 zeroes about 30% of 20,000 units of ones and multiplies the rest by
    exactly 1 / 0.7 (mean kept at 1); without an rng, and in forward, every unit passes unchanged."""
    units, rate = 20_000, 0.3
    net = Network([1, units, 1], ["identity", "identity"], "mean_squared_error", dropout=[rate, 0.0])
    flat = np.zeros(net.num_params, np.float32)
    net.named_parameters(flat)["layer_0_weight"][:] = 1.0  # the first layer outputs ones
    dropped = _dropped_units(net, flat, np.random.default_rng(4))
    kept = dropped[dropped != 0]
    assert np.all(kept == np.float32(1 / (1 - rate)))
    assert abs(1 - len(kept) / units - rate) < 0.02  # binomial std 0.0032
    assert abs(dropped.mean() - 1.0) < 0.03
    assert not np.array_equal(dropped, _dropped_units(net, flat, np.random.default_rng(5)))
    assert np.all(_dropped_units(net, flat, None) == 1.0)
    net.named_parameters(flat)["layer_1_weight"][:] = 1.0
    assert net.forward(flat, np.ones((3, 1), np.float32)).tolist() == [[units]] * 3
