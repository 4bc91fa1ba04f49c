"""Loss functions over a batch of network outputs, each returning a SUM over samples.

Shapes: outputs ``z`` are ``(n, k)``; labels are integers of shape ``(n,)`` in ``[0, k)``; float
targets are ``(n, k)``. Each loss writes ``dL/dz`` (the gradient of the SUM) into ``grad``, a
caller-owned ``(n, k)`` buffer of ``z``'s dtype, and returns the loss sum as a Python float.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

LossFn = Callable[[np.ndarray, np.ndarray, np.ndarray], float]


def softmax_cross_entropy(z: np.ndarray, labels: np.ndarray, grad: np.ndarray) -> float:
    """Softmax cross-entropy: loss ``sum_i logsumexp(z_i) - z_i[y_i]``.

    Gradient ``softmax(z) - onehot(y)``.
    Computed on ``z - max(z)`` per row, so logits of any finite size give finite values; the
    exponentials can only underflow to 0 (the correctly rounded value), which is silenced.
    """
    rows = np.arange(z.shape[0])
    np.subtract(z, z.max(axis=1, keepdims=True), out=grad)
    picked = grad[rows, labels]
    with np.errstate(under="ignore"):
        np.exp(grad, out=grad)
    row_sums = grad.sum(axis=1)
    grad /= row_sums[:, None]
    grad[rows, labels] -= 1
    per_sample = np.log(row_sums)
    per_sample -= picked
    return float(np.sum(per_sample, dtype=np.float64))


def mean_squared_error(z: np.ndarray, targets: np.ndarray, grad: np.ndarray) -> float:
    """Mean squared error: ``sum_i mean_j (z_ij - t_ij)**2``; gradient ``2 (z - t) / k``.

    ``targets`` is either float ``(n, k)`` or integer labels ``(n,)``, read as ``onehot(y)``.
    """
    num_outputs = z.shape[1]
    if targets.ndim == 1:
        np.copyto(grad, z)
        grad[np.arange(z.shape[0]), targets] -= 1
    else:
        np.subtract(z, targets, out=grad)
    flat_diff = grad.reshape(-1)
    loss = float(np.dot(flat_diff, flat_diff)) / num_outputs
    grad *= 2.0 / num_outputs
    return loss


@dataclass(frozen=True)
class Loss:
    """A loss function and whether it accepts float targets besides integer labels."""

    name: str
    function: LossFn
    accepts_float_targets: bool


_REGISTRY: dict[str, Loss] = {
    "softmax_cross_entropy": Loss("softmax_cross_entropy", softmax_cross_entropy, False),
    "mean_squared_error": Loss("mean_squared_error", mean_squared_error, True),
}

LOSSES: tuple[str, ...] = ("softmax_cross_entropy", "mean_squared_error")


def get_loss(name: str) -> Loss:
    """Return the loss called ``name`` (one of ``LOSSES``)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"Unknown loss: {name!r}; expected one of {LOSSES}") from None


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
