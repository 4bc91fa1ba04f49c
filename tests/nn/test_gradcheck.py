"""Analytic gradients of every activation, loss and a whole network against finite differences."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.nn import ACTIVATIONS, LOSSES, Network
from workers.nn import activations as activations_module
from workers.nn import losses as losses_module

from .gradcheck import assert_gradients_match, random_problem


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_hidden_activation_gradient(activation: str) -> None:
    """Each activation in a hidden layer back-propagates the finite-difference gradient."""
    assert_gradients_match(Network([3, 5, 4], [activation, "identity"], "softmax_cross_entropy"))


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_output_activation_gradient(activation: str) -> None:
    """Each activation applied to the output before the loss has the right gradient."""
    assert_gradients_match(Network([3, 4], [activation], "mean_squared_error"))


@pytest.mark.parametrize("loss", LOSSES)
def test_loss_gradient(loss: str) -> None:
    """Each loss gives the finite-difference gradient of its sum over samples."""
    assert_gradients_match(Network([4, 3], ["identity"], loss))


def test_mse_with_integer_labels_gradient() -> None:
    """Mean squared error against one-hot labels has the finite-difference gradient."""
    net = Network([3, 4], ["identity"], "mean_squared_error")
    assert_gradients_match(net, seed=1, integer_targets=True)


def test_whole_random_network_gradient() -> None:
    """A deep network mixing all activations has the finite-difference gradient."""
    net = Network([5, 7, 6, 4, 3], ["relu", "tanh", "sigmoid", "identity"], "softmax_cross_entropy")
    assert_gradients_match(net, seed=3)


def test_wrong_activation_derivative_fails_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """A deliberately wrong tanh derivative (1 - a instead of 1 - a**2) fails the gradient check."""

    def wrong_tanh_backward(delta: np.ndarray, a: np.ndarray, scratch: np.ndarray) -> None:
        delta *= 1 - a

    broken = activations_module.Activation(
        "tanh", activations_module.get_activation("tanh").forward, wrong_tanh_backward
    )
    monkeypatch.setitem(activations_module._REGISTRY, "tanh", broken)
    net = Network([3, 5, 4], ["tanh", "identity"], "softmax_cross_entropy")
    with pytest.raises(AssertionError, match="Not equal to tolerance"):
        assert_gradients_match(net)


def test_wrong_loss_gradient_fails_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """A mean squared error whose gradient drops the factor 2 fails the gradient check."""
    correct = losses_module.mean_squared_error

    def half_gradient(z: np.ndarray, targets: np.ndarray, grad: np.ndarray) -> float:
        loss = correct(z, targets, grad)
        grad *= 0.5
        return loss

    broken = losses_module.Loss("mean_squared_error", half_gradient, accepts_float_targets=True)
    monkeypatch.setitem(losses_module._REGISTRY, "mean_squared_error", broken)
    net = Network([3, 2], ["identity"], "mean_squared_error")
    with pytest.raises(AssertionError, match="Not equal to tolerance"):
        assert_gradients_match(net)


def test_leaky_relu_with_a_large_slope_gradient() -> None:
    """Leaky ReLU with slope 0.3 back-propagates the finite-difference gradient on both sides."""
    net = Network([3, 6, 2], ["leaky_relu", "identity"], "softmax_cross_entropy", slopes=[0.3, 0.01])
    assert_gradients_match(net, seed=4)


@pytest.mark.parametrize("smoothing", [0.1, 0.5])
def test_label_smoothing_gradient(smoothing: float) -> None:
    """Softmax cross-entropy with label smoothing has the finite-difference gradient."""
    net = Network([4, 5], ["identity"], "softmax_cross_entropy", label_smoothing=smoothing)
    assert_gradients_match(net, seed=5)


def test_huber_with_small_delta_gradient() -> None:
    """Huber with delta 0.3 (errors on both sides of the kink) has the finite-difference gradient."""
    net = Network([4, 3], ["identity"], "huber", huber_delta=0.3)
    assert_gradients_match(net, seed=6)


@pytest.mark.parametrize("loss", ["binary_cross_entropy", "mean_absolute_error", "huber"])
def test_losses_with_integer_labels_gradient(loss: str) -> None:
    """Losses taking float targets also have the right gradient against one-hot labels."""
    assert_gradients_match(Network([3, 4], ["identity"], loss), seed=7, integer_targets=True)


def test_dropout_gradient_with_fixed_masks() -> None:
    """With the dropout masks held fixed, a network with dropout on two layers has the right gradient."""
    net = Network(
        [4, 8, 6, 3], ["tanh", "gelu", "identity"], "softmax_cross_entropy", dropout=[0.5, 0.25, 0.0]
    )
    assert_gradients_match(net, seed=8, dropout_seed=123)


def test_dropout_really_drops_and_rescales() -> None:
    """A dropout draw zeroes units and changes the gradient; no rng means no dropout."""
    net = Network([4, 8, 3], ["relu", "identity"], "softmax_cross_entropy", dropout=[0.5, 0.0])
    flat, x, y = random_problem(net, np.random.default_rng(9), num_samples=32)
    plain, dropped = np.empty_like(flat), np.empty_like(flat)
    net.loss_and_grad(flat, x, y, plain)
    net.loss_and_grad(flat, x, y, dropped, np.random.default_rng(1))
    assert not np.allclose(plain, dropped)
    again = np.empty_like(flat)
    net.loss_and_grad(flat, x, y, again)
    assert np.array_equal(plain, again)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    sizes=st.lists(st.integers(1, 6), min_size=2, max_size=5),
    activations=st.lists(st.sampled_from(ACTIVATIONS), min_size=4, max_size=4),
    loss=st.sampled_from(LOSSES),
    num_samples=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_random_networks_gradient(
    sizes: list[int], activations: list[str], loss: str, num_samples: int, seed: int
) -> None:
    """Random stacks of any activations with any loss, from one sample up, pass the gradient check."""
    if loss == "softmax_cross_entropy" and sizes[-1] < 2:
        sizes[-1] = 2
    net = Network(sizes, activations[: len(sizes) - 1], loss)
    assert_gradients_match(net, seed=seed, num_samples=num_samples, rtol=1e-5)
