"""Which samples form each global batch: a seeded permutation per epoch, the last partial batch kept."""

from __future__ import annotations

import math

import numpy as np


def steps_per_epoch(num_samples: int, batch_size: int) -> int:
    """Number of global batches in one epoch; the last one may be partial."""
    return math.ceil(num_samples / batch_size)


def epoch_permutation(seed: int, epoch: int, num_samples: int) -> np.ndarray:
    """The sample order of `epoch` (1-based); the same on every process for the same seed."""
    return np.random.default_rng([seed, epoch]).permutation(num_samples)


def batch_indices(order: np.ndarray, batch_index: int, batch_size: int) -> np.ndarray:
    """Sample indices of the `batch_index`-th global batch (0-based) of an epoch's order."""
    return order[batch_index * batch_size : (batch_index + 1) * batch_size]
