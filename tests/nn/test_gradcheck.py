"""Analytic gradients of every activation, loss and a whole network against finite differences."""

import numpy as np
import pytest

from workers.nn import ACTIVATIONS, LOSSES, Network
from workers.nn import activations as activations_module
from workers.nn import losses as losses_module

from .gradcheck import assert_gradients_match


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
