"""Element-wise activations, each a forward and a backward that work in place.

Most derivatives are written in terms of the OUTPUT ``a = f(z)``, so the backward pass needs no copy
of the pre-activation ``z``; GELU is the exception and asks the network to keep ``z`` (``saves_input``):

==========  =========================================  =======================================
name        forward ``a = f(z)``                       derivative ``f'(z)``
==========  =========================================  =======================================
relu        ``max(z, 0)``                              ``1[a > 0]``
leaky_relu  ``z if z > 0 else slope * z``              ``1 if a > 0 else slope``  (0 <= slope < 1)
elu         ``z if z > 0 else exp(z) - 1``             ``1 if a > 0 else a + 1``
gelu        ``z/2 (1 + tanh(u))``, ``u = c (z + k z^3)`` ``(1 + t)/2 + z/2 (1 - t^2) c (1 + 3k z^2)``
sigmoid     ``1 / (1 + exp(-z))``                      ``a * (1 - a)``
tanh        ``tanh(z)``                                ``1 - a**2``
softplus    ``log(1 + exp(z))``                        ``sigmoid(z) = -expm1(-a)``
identity    ``z``                                      ``1``
==========  =========================================  =======================================

GELU is the tanh approximation (Hendrycks & Gimpel; PyTorch's ``approximate="tanh"``) with
``c = sqrt(2/pi)``, ``k = 0.044715``, ``t = tanh(u)``.

All arrays share one shape, e.g. ``(n, fan_out)``, and one floating dtype; ``scratch`` is a
caller-owned buffer of that shape and dtype whose contents are overwritten. ``backward`` may also
overwrite ``a`` (the network no longer needs it) and, for ``saves_input`` activations, gets the
pre-activation ``z`` as a fourth argument, which it may overwrite too.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

ForwardFn = Callable[[np.ndarray, np.ndarray], None]
BackwardFn = Callable[..., None]

DEFAULT_LEAKY_SLOPE = 0.01
_GELU_C = math.sqrt(2.0 / math.pi)
_GELU_K = 0.044715


@dataclass(frozen=True)
class Activation:
    """An activation as two in-place functions.

    ``forward(z, scratch)`` overwrites ``z`` with ``f(z)``.
    ``backward(delta, a, scratch[, z])`` multiplies ``delta`` by ``f'(z)``; ``z`` is passed only
    when ``saves_input`` (the network then copies ``z`` aside before ``forward``).
    """

    name: str
    forward: ForwardFn
    backward: BackwardFn
    saves_input: bool = False


def _relu_forward(z: np.ndarray, scratch: np.ndarray) -> None:
    np.maximum(z, 0, out=z)


def _relu_backward(delta: np.ndarray, a: np.ndarray, scratch: np.ndarray) -> None:
    np.greater(a, 0, out=scratch)
    delta *= scratch


def _leaky_forward(z: np.ndarray, scratch: np.ndarray, slope: float) -> None:
    np.multiply(z, slope, out=scratch)
    np.maximum(z, scratch, out=z)  # valid because 0 <= slope < 1


def _leaky_backward(delta: np.ndarray, a: np.ndarray, scratch: np.ndarray, slope: float) -> None:
    np.greater(a, 0, out=scratch)  # a > 0 exactly where z > 0, since slope >= 0
    scratch *= 1.0 - slope
    scratch += slope
    delta *= scratch


def _elu_forward(z: np.ndarray, scratch: np.ndarray) -> None:
    np.minimum(z, 0, out=scratch)
    with np.errstate(under="ignore"):
        np.expm1(scratch, out=scratch)
    np.maximum(z, 0, out=z)
    z += scratch


def _elu_backward(delta: np.ndarray, a: np.ndarray, scratch: np.ndarray) -> None:
    np.add(a, 1, out=scratch)
    np.minimum(scratch, 1, out=scratch)  # a > 0 gives a + 1 > 1, clipped to 1
    delta *= scratch


def _gelu_inner(z: np.ndarray, out: np.ndarray) -> None:
    """``out = tanh(c z (1 + k min(z^2, 400)))``: capping ``z^2`` keeps huge inputs finite and
    changes nothing, since ``tanh`` is already exactly +-1 for ``|z| > 20``."""
    np.clip(z, -20, 20, out=out)
    np.multiply(out, out, out=out)
    out *= _GELU_K
    out += 1
    out *= z
    out *= _GELU_C
    np.tanh(out, out=out)


def _gelu_forward(z: np.ndarray, scratch: np.ndarray) -> None:
    _gelu_inner(z, scratch)
    scratch += 1
    z *= scratch
    z *= 0.5


def _gelu_backward(delta: np.ndarray, a: np.ndarray, scratch: np.ndarray, z: np.ndarray) -> None:
    t = a  # a is free to overwrite
    _gelu_inner(z, t)
    np.multiply(t, t, out=scratch)
    np.subtract(1, scratch, out=scratch)
    scratch *= z  # z (1 - t^2)
    t += 1
    t *= 0.5  # (1 + t) / 2
    np.clip(z, -20, 20, out=z)
    np.multiply(z, z, out=z)
    z *= 3 * _GELU_K
    z += 1
    z *= 0.5 * _GELU_C  # c (1 + 3k z^2) / 2
    scratch *= z
    scratch += t
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


def _softplus_forward(z: np.ndarray, scratch: np.ndarray) -> None:
    """Stable softplus: ``max(z, 0) + log1p(exp(-|z|))``; the exponent is never positive."""
    np.abs(z, out=scratch)
    np.negative(scratch, out=scratch)
    with np.errstate(under="ignore"):
        np.exp(scratch, out=scratch)
        np.log1p(scratch, out=scratch)
    np.maximum(z, 0, out=z)
    z += scratch


def _softplus_backward(delta: np.ndarray, a: np.ndarray, scratch: np.ndarray) -> None:
    np.negative(a, out=scratch)
    with np.errstate(under="ignore"):
        np.expm1(scratch, out=scratch)
    np.negative(scratch, out=scratch)  # 1 - exp(-a) = sigmoid(z), accurate for small a
    delta *= scratch


def _identity_forward(z: np.ndarray, scratch: np.ndarray) -> None:
    return None


def _identity_backward(delta: np.ndarray, a: np.ndarray, scratch: np.ndarray) -> None:
    return None


_REGISTRY: dict[str, Activation] = {
    "relu": Activation("relu", _relu_forward, _relu_backward),
    "elu": Activation("elu", _elu_forward, _elu_backward),
    "gelu": Activation("gelu", _gelu_forward, _gelu_backward, saves_input=True),
    "sigmoid": Activation("sigmoid", _sigmoid_forward, _sigmoid_backward),
    "tanh": Activation("tanh", _tanh_forward, _tanh_backward),
    "softplus": Activation("softplus", _softplus_forward, _softplus_backward),
    "identity": Activation("identity", _identity_forward, _identity_backward),
}

ACTIVATIONS: tuple[str, ...] = (
    "relu",
    "leaky_relu",
    "elu",
    "gelu",
    "sigmoid",
    "tanh",
    "softplus",
    "identity",
)
# Activations that behave like ReLU for initialisation: He by default, Glorot for the others.
RELU_LIKE: frozenset[str] = frozenset({"relu", "leaky_relu", "elu", "gelu", "softplus"})


def get_activation(name: str, slope: float = DEFAULT_LEAKY_SLOPE) -> Activation:
    """Return the activation called ``name`` (one of ``ACTIVATIONS``); ``slope`` is leaky_relu's
    negative-side slope, in ``[0, 1)``, and ignored by the others."""
    if name == "leaky_relu":
        if not (math.isfinite(slope) and 0 <= slope < 1):
            raise ValueError(f"Invalid leaky_relu slope: {slope}; must be in [0, 1)")
        return Activation(
            "leaky_relu",
            functools.partial(_leaky_forward, slope=slope),
            functools.partial(_leaky_backward, slope=slope),
        )
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"Unknown activation: {name!r}; expected one of {ACTIVATIONS}") from None


def apply_activation(name: str, z: np.ndarray, slope: float = DEFAULT_LEAKY_SLOPE) -> np.ndarray:
    """Return ``f(z)`` as a new array of ``z``'s shape and dtype (for inspection and tests)."""
    out = np.array(z, copy=True)
    get_activation(name, slope).forward(out, np.empty_like(out))
    return out
