"""Gradient check: analytic gradients against central finite differences in float64."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from workers.nn import Network


def numerical_gradient(
    loss_of: Callable[[np.ndarray], float], params: np.ndarray, eps: float = 1e-6
) -> np.ndarray:
    """Central differences ``(L(p + eps e_i) - L(p - eps e_i)) / (2 eps)`` for every ``i``."""
    grad = np.empty_like(params)
    probe = params.copy()
    for index in range(params.size):
        probe[index] = params[index] + eps
        upper = loss_of(probe)
        probe[index] = params[index] - eps
        lower = loss_of(probe)
        probe[index] = params[index]
        grad[index] = (upper - lower) / (2 * eps)
    return grad


def random_problem(
    net: Network, rng: np.random.Generator, num_samples: int = 6, integer_targets: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Float64 params (biases made non-zero), inputs ``(n, fan_in)`` and targets for ``net``:
    float ``(n, out)`` (in [0, 1) for binary cross-entropy) for the losses that take them unless
    ``integer_targets``, else labels ``(n,)``."""
    flat = net.init_params(rng, np.float64)
    flat += 0.1 * rng.standard_normal(flat.shape)
    x = rng.standard_normal((num_samples, net.layer_sizes[0]))
    if net.loss_name == "binary_cross_entropy" and not integer_targets:
        y = rng.random((num_samples, net.num_outputs))
    elif net.loss_name != "softmax_cross_entropy" and not integer_targets:
        y = rng.standard_normal((num_samples, net.num_outputs))
    else:
        y = rng.integers(0, net.num_outputs, size=num_samples)
    return flat, x, y


def assert_gradients_match(
    net: Network,
    seed: int = 0,
    integer_targets: bool = False,
    rtol: float = 1e-6,
    num_samples: int = 6,
    dropout_seed: int | None = None,
) -> None:
    """Raise ``AssertionError`` unless ``net.loss_and_grad`` matches finite differences.

    With ``dropout_seed`` every evaluation draws the same dropout masks, so the loss is a fixed
    differentiable function of the parameters."""
    rng = np.random.default_rng(seed)
    flat, x, y = random_problem(net, rng, num_samples=num_samples, integer_targets=integer_targets)
    analytic = np.empty_like(flat)

    def masks() -> np.random.Generator | None:
        return None if dropout_seed is None else np.random.default_rng(dropout_seed)

    net.loss_and_grad(flat, x, y, analytic, masks())
    scratch = np.empty_like(flat)
    numeric = numerical_gradient(lambda p: net.loss_and_grad(p, x, y, scratch, masks()), flat)
    np.testing.assert_allclose(analytic, numeric, rtol=rtol, atol=1e-7)
