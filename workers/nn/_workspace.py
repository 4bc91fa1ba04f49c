"""Per-batch-size buffers for the forward and backward passes, reused across calls."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_MAX_CACHED_WORKSPACES = 4


@dataclass(frozen=True)
class Workspace:
    """Buffers for one batch of ``n`` samples; entry ``i`` is layer ``i``, ``(n, fan_out_i)``.

    ``activations[i]`` holds the layer's pre-activation and then, in place, its output ``a_i``;
    ``deltas[i]`` holds ``dL/da_i`` and then, in place, ``dL/dz_i``; ``scratch[i]`` is temporary.
    """

    activations: list[np.ndarray]
    deltas: list[np.ndarray]
    scratch: list[np.ndarray]

    @classmethod
    def allocate(cls, num_samples: int, fan_outs: Sequence[int], dtype: np.dtype) -> Workspace:
        """Allocate uninitialised buffers for ``num_samples`` rows."""

        def buffers() -> list[np.ndarray]:
            return [np.empty((num_samples, size), dtype=dtype) for size in fan_outs]

        return cls(activations=buffers(), deltas=buffers(), scratch=buffers())


class WorkspaceCache:
    """Keeps the workspaces of the few most recently used ``(batch size, dtype)`` pairs.

    Not thread-safe: one network object must not run two passes at the same time.
    """

    def __init__(self, fan_outs: Sequence[int]) -> None:
        self._fan_outs = tuple(fan_outs)
        self._cached: dict[tuple[int, np.dtype], Workspace] = {}

    def get(self, num_samples: int, dtype: np.dtype) -> Workspace:
        """Return the workspace for ``num_samples`` rows of ``dtype``, allocating it if needed."""
        key = (num_samples, np.dtype(dtype))
        workspace = self._cached.pop(key, None)
        if workspace is None:
            workspace = Workspace.allocate(num_samples, self._fan_outs, key[1])
            if len(self._cached) >= _MAX_CACHED_WORKSPACES:
                self._cached.pop(next(iter(self._cached)))
        self._cached[key] = workspace
        return workspace
