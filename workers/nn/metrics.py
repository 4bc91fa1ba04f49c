"""Evaluation metrics as additive sums, so workers' shares of a test set combine by addition.

``metric_sums`` gives, for outputs ``z`` ``(n, k)`` and targets (labels ``(n,)`` or float
``(n, k)``; labels count as one-hot rows for the regression sums), the sums below; ``summarize``
turns summed sums into metrics:

- ``accuracy = correct / n`` and ``top_k_accuracy = top_k_correct / n`` for integer labels; NaN
  for float targets, where no output is "the" class (ties go to the lower index, as ``argmax``'s,
  so top-1 equals accuracy);
- ``label_accuracy``, for multi-label outputs (logits of independent 0/1 labels, as binary
  cross-entropy trains): the fraction of the ``n k`` labels whose prediction ``z > 0`` (sigmoid
  above 1/2) matches ``t >= 1/2``; NaN for other losses;
- ``mse = sum (z - t)^2 / (n k)``, ``mae = sum |z - t| / (n k)``;
- ``r2 = 1 - sum (z - t)^2 / sum_j sum_i (t_ij - mean_i t_ij)^2`` (sklearn's variance-weighted
  R^2 over outputs), from per-output sums of ``t`` and ``t^2``; these three only for a regression
  loss (``regression``), whose outputs are predictions of ``t``: NaN for logits, where a distance
  to one-hot rows or 0/1 labels means nothing.
"""

from __future__ import annotations

import math

import numpy as np

from .losses import count_correct

Sums = dict[str, float | np.ndarray]


def metric_sums(
    z: np.ndarray, targets: np.ndarray, top_k: int, *, multi_label: bool = False, regression: bool = True
) -> Sums:
    """Additive sums for ``summarize`` (see the module docstring); all in float64. ``multi_label``:
    ``z`` are logits of independent labels, so the per-label accuracy is counted too; ``regression``:
    ``z`` predict the targets, so the regression sums are counted."""
    n, k = z.shape
    labels = targets.ndim == 1
    dense = np.zeros((n, k)) if labels else targets.astype(np.float64)
    if labels:
        dense[np.arange(n), targets] = 1.0
    diff = z.astype(np.float64) - dense if regression else np.zeros((0, k))
    return {
        "regressed": float(n) if regression else 0.0,
        "count": float(n),
        "labelled": float(n) if labels else 0.0,  # rows with a class label: accuracy's denominator
        "label_checks": float(n * k) if multi_label else 0.0,
        "label_hits": float(np.count_nonzero((z > 0) == (dense >= 0.5))) if multi_label else 0.0,
        "correct": float(count_correct(z, targets)),
        "top_k_correct": float(_top_k_hits(z, targets, top_k)) if labels else 0.0,
        "squared_error": float(np.vdot(diff, diff)),
        "absolute_error": float(np.abs(diff).sum()),
        "target_sum": dense.sum(axis=0) if regression else np.zeros(k),
        "target_square_sum": np.square(dense).sum(axis=0) if regression else np.zeros(k),
    }


def add_sums(total: Sums | None, part: Sums) -> Sums:
    """Return ``total + part`` key by key (``total`` None means nothing yet)."""
    if total is None:
        return {
            key: np.array(value, copy=True) if isinstance(value, np.ndarray) else value
            for key, value in part.items()
        }
    return {key: total[key] + part[key] for key in total}


def summarize(sums: Sums, num_outputs: int) -> dict[str, float]:
    """Metrics from summed ``metric_sums``; NaN where undefined (no samples, constant targets)."""
    n = float(sums["count"])
    if n == 0:
        return {
            name: math.nan for name in ("accuracy", "top_k_accuracy", "label_accuracy", "mse", "mae", "r2")
        }
    regressed = float(sums["regressed"])
    elements = regressed * num_outputs
    spread = float(np.sum(sums["target_square_sum"] - np.square(sums["target_sum"]) / n))
    residual = float(sums["squared_error"])
    return {
        "accuracy": _ratio(sums["correct"], sums["labelled"]),
        "top_k_accuracy": _ratio(sums["top_k_correct"], sums["labelled"]),
        "label_accuracy": _ratio(sums["label_hits"], sums["label_checks"]),
        "mse": _ratio(residual, elements),
        "mae": _ratio(sums["absolute_error"], elements),
        "r2": 1.0 - residual / spread if regressed and spread > 0 else math.nan,
    }


def _ratio(part: float, whole: float) -> float:
    """``part / whole``, NaN when nothing was counted (the metric does not apply)."""
    return float(part) / float(whole) if whole else math.nan


def _top_k_hits(z: np.ndarray, labels: np.ndarray, k: int) -> int:
    """Rows whose label is among the ``k`` largest outputs, ties broken toward the lower index as
    ``argmax`` does, so ``k = 1`` counts exactly what ``count_correct`` counts.

    The label's rank is the number of outputs above it plus the equal ones at lower indices.
    """
    n, outputs = z.shape
    picked = z[np.arange(n), labels][:, None]
    earlier = np.arange(outputs)[None, :] < labels[:, None]
    rank = np.count_nonzero((z > picked) | ((z == picked) & earlier), axis=1)
    return int(np.count_nonzero(rank < k))
