"""Loss functions over a batch of network outputs, each returning a SUM over samples.

Shapes: outputs ``z`` are ``(n, k)``; labels are integers of shape ``(n,)`` in ``[0, k)``; float
targets are ``(n, k)``. Each loss writes ``dL/dz`` (the gradient of the SUM) into ``grad``, a
caller-owned ``(n, k)`` buffer of ``z``'s dtype, and returns the loss sum as a Python float.
Losses that accept float targets read integer labels as one-hot rows. Regression losses average
over the ``k`` outputs of a sample (``mean_j``) and sum over samples.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

LossFn = Callable[[np.ndarray, np.ndarray, np.ndarray], float]


def softmax_cross_entropy(
    z: np.ndarray, labels: np.ndarray, grad: np.ndarray, label_smoothing: float = 0.0
) -> float:
    """Softmax cross-entropy against ``q = (1 - s) onehot(y) + s / k`` (``s`` the label smoothing):
    loss ``sum_i logsumexp(z_i) - sum_j q_ij z_ij``; gradient ``softmax(z) - q``.

    Computed on ``z - max(z)`` per row, so logits of any finite size give finite values; the
    exponentials can only underflow to 0 (the correctly rounded value), which is silenced.
    """
    rows = np.arange(z.shape[0])
    np.subtract(z, z.max(axis=1, keepdims=True), out=grad)
    picked = grad[rows, labels]
    if label_smoothing:
        row_means = grad.mean(axis=1, dtype=np.float64)
        picked = (1.0 - label_smoothing) * picked + label_smoothing * row_means
    with np.errstate(under="ignore"):
        np.exp(grad, out=grad)
    row_sums = grad.sum(axis=1)
    grad /= row_sums[:, None]
    if label_smoothing:
        grad -= np.asarray(label_smoothing / z.shape[1], dtype=grad.dtype)
    grad[rows, labels] -= np.asarray(1.0 - label_smoothing, dtype=grad.dtype)
    per_sample = np.log(row_sums) - picked
    return float(np.sum(per_sample, dtype=np.float64))


def binary_cross_entropy(z: np.ndarray, targets: np.ndarray, grad: np.ndarray) -> float:
    """Binary cross-entropy with logits, one independent label per output (multi-label):
    loss ``sum_ij max(z, 0) - z t + log(1 + exp(-|z|))``; gradient ``sigmoid(z) - t``.

    Targets in ``[0, 1]``; no exponent is ever positive, so any finite logit gives finite values.
    """
    targets = _dense_targets(z, targets)
    np.abs(z, out=grad)
    np.negative(grad, out=grad)
    with np.errstate(under="ignore"):
        np.exp(grad, out=grad)  # e = exp(-|z|) in (0, 1]
        loss = float(np.sum(np.log1p(grad), dtype=np.float64))
    loss += float(np.sum(np.maximum(z, 0), dtype=np.float64))
    loss -= float(np.vdot(z.astype(np.float64).ravel(), targets.astype(np.float64).ravel()))
    # sigmoid(z) = 1 / (1 + e) for z >= 0, e / (1 + e) for z < 0
    sigmoid = np.where(z >= 0, 1.0, grad)
    grad += 1
    np.divide(sigmoid, grad, out=grad)
    grad -= targets
    return loss


def mean_squared_error(z: np.ndarray, targets: np.ndarray, grad: np.ndarray) -> float:
    """Mean squared error: ``sum_i mean_j (z_ij - t_ij)**2``; gradient ``2 (z - t) / k``.

    ``targets`` is either float ``(n, k)`` or integer labels ``(n,)``, read as ``onehot(y)``.
    """
    num_outputs = z.shape[1]
    _difference(z, targets, grad)
    flat_diff = grad.reshape(-1)
    loss = float(np.dot(flat_diff, flat_diff)) / num_outputs
    grad *= 2.0 / num_outputs
    return loss


def mean_absolute_error(z: np.ndarray, targets: np.ndarray, grad: np.ndarray) -> float:
    """Mean absolute error: ``sum_i mean_j |z_ij - t_ij|``; gradient ``sign(z - t) / k``."""
    num_outputs = z.shape[1]
    _difference(z, targets, grad)
    loss = float(np.sum(np.abs(grad), dtype=np.float64)) / num_outputs
    np.sign(grad, out=grad)
    grad *= 1.0 / num_outputs
    return loss


def huber(z: np.ndarray, targets: np.ndarray, grad: np.ndarray, delta: float = 1.0) -> float:
    """Huber loss: ``sum_i mean_j h(z_ij - t_ij)`` with ``h(d) = d^2 / 2`` for ``|d| <= delta``,
    else ``delta (|d| - delta / 2)``; gradient ``clip(d, -delta, delta) / k``."""
    num_outputs = z.shape[1]
    _difference(z, targets, grad)
    size = np.abs(grad, dtype=np.float64)
    quadratic = np.minimum(size, delta)
    # h(d) = q^2 / 2 + delta (|d| - q) with q = min(|d|, delta)
    loss = float(np.sum(0.5 * quadratic * quadratic + delta * (size - quadratic))) / num_outputs
    np.clip(grad, -delta, delta, out=grad)
    grad *= 1.0 / num_outputs
    return loss


def _difference(z: np.ndarray, targets: np.ndarray, out: np.ndarray) -> None:
    """``out = z - t`` with integer labels read as one-hot rows."""
    if targets.ndim == 1:
        np.copyto(out, z)
        out[np.arange(z.shape[0]), targets] -= 1
    else:
        np.subtract(z, targets, out=out)


def _dense_targets(z: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Float ``(n, k)`` targets; integer labels become one-hot rows (a new array)."""
    if targets.ndim == 2:
        return targets
    dense = np.zeros_like(z)
    dense[np.arange(z.shape[0]), targets] = 1
    return dense


@dataclass(frozen=True)
class Loss:
    """A loss function and whether it accepts float targets besides integer labels."""

    name: str
    function: LossFn
    accepts_float_targets: bool


_REGISTRY: dict[str, Loss] = {
    "softmax_cross_entropy": Loss("softmax_cross_entropy", softmax_cross_entropy, False),
    "binary_cross_entropy": Loss("binary_cross_entropy", binary_cross_entropy, True),
    "mean_squared_error": Loss("mean_squared_error", mean_squared_error, True),
    "mean_absolute_error": Loss("mean_absolute_error", mean_absolute_error, True),
    "huber": Loss("huber", huber, True),
}

LOSSES: tuple[str, ...] = tuple(_REGISTRY)
REGRESSION_LOSSES: frozenset[str] = frozenset({"mean_squared_error", "mean_absolute_error", "huber"})


def get_loss(name: str, *, label_smoothing: float = 0.0, huber_delta: float = 1.0) -> Loss:
    """Return the loss called ``name`` (one of ``LOSSES``).

    ``label_smoothing`` in ``[0, 1)`` applies to softmax cross-entropy, ``huber_delta > 0`` to
    Huber; both are ignored by the other losses.
    """
    try:
        loss = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"Unknown loss: {name!r}; expected one of {LOSSES}") from None
    if name == "softmax_cross_entropy" and label_smoothing:
        if not (math.isfinite(label_smoothing) and 0 <= label_smoothing < 1):
            raise ValueError(f"Invalid label_smoothing: {label_smoothing}; must be in [0, 1)")
        function = functools.partial(softmax_cross_entropy, label_smoothing=label_smoothing)
        return Loss(name, function, loss.accepts_float_targets)
    if name == "huber" and huber_delta != 1.0:
        if not (math.isfinite(huber_delta) and huber_delta > 0):
            raise ValueError(f"Invalid huber_delta: {huber_delta}; must be > 0")
        return Loss(name, functools.partial(huber, delta=huber_delta), loss.accepts_float_targets)
    return loss


def prepare_targets(
    loss: Loss, y: np.ndarray, num_samples: int, num_outputs: int, dtype: np.dtype
) -> np.ndarray:
    """Validate ``y``; return integer labels ``(n,)`` or float targets ``(n, k)`` in ``dtype``."""
    y = np.asarray(y)
    if np.issubdtype(y.dtype, np.integer):
        return _check_labels(y, num_samples, num_outputs)
    if not loss.accepts_float_targets:
        raise ValueError(f"{loss.name} needs integer labels, got y of dtype {y.dtype}")
    if y.ndim == 1 and num_outputs == 1:
        y = y.reshape(-1, 1)
    if y.shape != (num_samples, num_outputs):
        raise ValueError(f"float targets must have shape {(num_samples, num_outputs)}, got {y.shape}")
    return y.astype(dtype, copy=False)


def _check_labels(labels: np.ndarray, num_samples: int, num_outputs: int) -> np.ndarray:
    if labels.shape != (num_samples,):
        raise ValueError(f"labels must have shape {(num_samples,)}, got {labels.shape}")
    if num_samples and (labels.min() < 0 or labels.max() >= num_outputs):
        low, high = int(labels.min()), int(labels.max())
        raise ValueError(f"labels must lie in [0, {num_outputs}), got range [{low}, {high}]")
    return labels


def count_correct(z: np.ndarray, targets: np.ndarray) -> int:
    """Number of rows whose ``argmax(z)`` equals the label; 0 for float targets."""
    if targets.ndim != 1 or z.shape[0] == 0:
        return 0
    return int(np.count_nonzero(z.argmax(axis=1) == targets))
