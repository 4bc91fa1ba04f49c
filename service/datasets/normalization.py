"""Input normalization: per-feature offset and scale, fitted on the training set only."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

METHODS = ("scale", "standardize", "none")
_ROWS_PER_CHUNK = 4096  # 4096 x 784 float64 = 25 MB of temporaries, whatever n is


@dataclass(frozen=True, eq=False)
class Normalization:
    """Model input = (x_raw - offset) * scale, both of shape (features,) float32."""

    offset: np.ndarray
    scale: np.ndarray


def compute_normalization(x_train: np.ndarray, method: str) -> Normalization:
    """Fit `method` on x_train of shape (n, features).

    "scale": offset 0, scale 1/255 (8-bit pixels to [0, 1]); "standardize": per-feature mean and
    1/std (population std, float64, computed in chunks; constant features get scale 1);
    "none": offset 0, scale 1.
    """
    if x_train.ndim != 2 or x_train.shape[0] == 0:
        raise ValueError(f"x_train must have shape (n>0, features), got {x_train.shape}")
    features = x_train.shape[1]
    if method == "scale":
        return _constant(features, 0.0, 1.0 / 255.0)
    if method == "none":
        return _constant(features, 0.0, 1.0)
    if method == "standardize":
        mean, std, constant = _mean_std(x_train)
        scale = 1.0 / np.where(constant, 1.0, std)
        return Normalization(mean.astype(np.float32), scale.astype(np.float32))
    raise ValueError(f"unknown normalization method {method!r}; expected one of {METHODS}")


def apply_normalization(x: np.ndarray, norm: Normalization) -> np.ndarray:
    """(x - offset) * scale as a new float32 (n, features) array; x itself is left untouched."""
    if x.ndim != 2 or x.shape[1] != norm.offset.shape[0]:
        raise ValueError(
            f"x has shape {x.shape} but the normalization is for {norm.offset.shape[0]} features"
        )
    out = x.astype(np.float32)  # before arithmetic: uint8 would wrap around
    out -= norm.offset
    out *= norm.scale
    return out


def _constant(features: int, offset: float, scale: float) -> Normalization:
    return Normalization(
        np.full(features, offset, dtype=np.float32), np.full(features, scale, dtype=np.float32)
    )


def _mean_std(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-feature mean, std and "is constant", two passes over float64 chunks.

    Two passes rather than sum of squares: E[x^2] - E[x]^2 cancels badly for large offsets.
    Constancy is min == max, exact, so rounding in the mean cannot fake a tiny std.
    """
    n = x.shape[0]
    total = np.zeros(x.shape[1])
    lo, hi = x[0].astype(np.float64), x[0].astype(np.float64)
    for chunk in _chunks(x):
        total += chunk.sum(axis=0)
        np.minimum(lo, chunk.min(axis=0), out=lo)
        np.maximum(hi, chunk.max(axis=0), out=hi)
    mean = total / n
    squares = np.zeros(x.shape[1])
    for chunk in _chunks(x):
        chunk -= mean
        squares += np.einsum("ij,ij->j", chunk, chunk)
    return mean, np.sqrt(squares / n), lo == hi


def _chunks(x: np.ndarray) -> Iterator[np.ndarray]:
    for start in range(0, x.shape[0], _ROWS_PER_CHUNK):
        yield x[start : start + _ROWS_PER_CHUNK].astype(np.float64)
