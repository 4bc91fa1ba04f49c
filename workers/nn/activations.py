"""Element-wise activations, each a forward and a backward that work in place.

Every activation's derivative is written in terms of its OUTPUT ``a = f(z)``, so the backward pass
needs no copy of the pre-activation ``z``:

==========  ==========================  ======================
name        forward ``a = f(z)``        derivative ``f'(z)``
==========  ==========================  ======================
relu        ``max(z, 0)``               ``1[a > 0]``
sigmoid     ``1 / (1 + exp(-z))``       ``a * (1 - a)``
tanh        ``tanh(z)``                 ``1 - a**2``
identity    ``z``                       ``1``
==========  ==========================  ======================

All arrays share one shape, e.g. ``(n, fan_out)``, and one floating dtype; ``scratch`` is a
caller-owned buffer of that shape and dtype whose contents are overwritten.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

ForwardFn = Callable[[np.ndarray, np.ndarray], None]
BackwardFn = Callable[[np.ndarray, np.ndarray, np.ndarray], None]


@dataclass(frozen=True)
class Activation:
    """An activation as two in-place functions.

    ``forward(z, scratch)`` overwrites ``z`` with ``f(z)``.
    ``backward(delta, a, scratch)`` multiplies ``delta`` by ``f'(z)`` computed from ``a = f(z)``.
    """

    name: str
    forward: ForwardFn
    backward: BackwardFn


def _relu_forward(z: np.ndarray, scratch: np.ndarray) -> None:
    np.maximum(z, 0, out=z)


def _relu_backward(delta: np.ndarray, a: np.ndarray, scratch: np.ndarray) -> None:
    np.greater(a, 0, out=scratch)
    delta *= scratch


def _sigmoid_forward(z: np.ndarray, scratch: np.ndarray) -> None:
    """Stable sigmoid: ``exp(min(z, 0)) / (1 + exp(-|z|))``; never overflows.

    Both exponents are <= 0, so ``exp`` can only underflow to 0, which is the correctly rounded
    result for very negative arguments; that underflow is silenced on purpose.
    """
    np.abs(z, out=scratch)
    np.negative(scratch, out=scratch)
    np.minimum(z, 0, out=z)
    with np.errstate(under="ignore"):
        np.exp(scratch, out=scratch)
        np.exp(z, out=z)
    scratch += 1
    z /= scratch


def _sigmoid_backward(delta: np.ndarray, a: np.ndarray, scratch: np.ndarray) -> None:
    np.subtract(1, a, out=scratch)
    scratch *= a
    delta *= scratch


def _tanh_forward(z: np.ndarray, scratch: np.ndarray) -> None:
    np.tanh(z, out=z)


def _tanh_backward(delta: np.ndarray, a: np.ndarray, scratch: np.ndarray) -> None:
    np.multiply(a, a, out=scratch)
    np.subtract(1, scratch, out=scratch)
    delta *= scratch


def _identity_forward(z: np.ndarray, scratch: np.ndarray) -> None:
    return None


def _identity_backward(delta: np.ndarray, a: np.ndarray, scratch: np.ndarray) -> None:
    return None


_REGISTRY: dict[str, Activation] = {
    "relu": Activation("relu", _relu_forward, _relu_backward),
    "sigmoid": Activation("sigmoid", _sigmoid_forward, _sigmoid_backward),
    "tanh": Activation("tanh", _tanh_forward, _tanh_backward),
    "identity": Activation("identity", _identity_forward, _identity_backward),
}

ACTIVATIONS: tuple[str, ...] = ("relu", "sigmoid", "tanh", "identity")


def get_activation(name: str) -> Activation:
    """Return the activation called ``name`` (one of ``ACTIVATIONS``)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"Unknown activation: {name!r}; expected one of {ACTIVATIONS}") from None


def apply_activation(name: str, z: np.ndarray) -> np.ndarray:
    """Return ``f(z)`` as a new array of ``z``'s shape and dtype (for inspection and tests)."""
    out = np.array(z, copy=True)
    get_activation(name).forward(out, np.empty_like(out))
    return out
