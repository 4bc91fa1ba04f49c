"""Per-batch-size buffers for the forward and backward passes, reused across calls."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_MAX_CACHED_WORKSPACES = 4


@dataclass(frozen=True)
class LayerBuffers:
    """Which optional buffers each layer needs: the pre-activation copy, the dropout buffers."""

    fan_outs: tuple[int, ...]
    saves_input: tuple[bool, ...]
    has_dropout: tuple[bool, ...]


@dataclass(frozen=True)
class Workspace:
    """Buffers for one batch of ``n`` samples; entry ``i`` is layer ``i``, ``(n, fan_out_i)``.

    ``activations[i]`` holds the layer's pre-activation and then, in place, its output ``a_i``;
    ``deltas[i]`` holds ``dL/da_i`` and then, in place, ``dL/dz_i``; ``scratch[i]`` is temporary.
    ``saved[i]`` keeps ``z_i`` for activations that need it, ``masks[i]`` the inverted-dropout
    mask (0 or ``1 / (1 - p)``) and ``dropped[i]`` the output after dropout; None where unused.
    """

    activations: list[np.ndarray]
    deltas: list[np.ndarray]
    scratch: list[np.ndarray]
    saved: list[np.ndarray | None]
    masks: list[np.ndarray | None]
    dropped: list[np.ndarray | None]

    @classmethod
    def allocate(cls, num_samples: int, layers: LayerBuffers, dtype: np.dtype) -> Workspace:
        """Allocate uninitialised buffers for ``num_samples`` rows."""

        def buffers(needed: Sequence[bool] | None = None) -> list:
            flags = needed if needed is not None else (True,) * len(layers.fan_outs)
            return [
                np.empty((num_samples, size), dtype=dtype) if flag else None
                for size, flag in zip(layers.fan_outs, flags, strict=True)
            ]

        return cls(
            activations=buffers(),
            deltas=buffers(),
            scratch=buffers(),
            saved=buffers(layers.saves_input),
            masks=buffers(layers.has_dropout),
            dropped=buffers(layers.has_dropout),
        )


class WorkspaceCache:
    """Keeps the workspaces of the few most recently used ``(batch size, dtype)`` pairs.

    Not thread-safe: one network object must not run two passes at the same time.
    """

    def __init__(self, layers: LayerBuffers) -> None:
        self._layers = layers
        self._cached: dict[tuple[int, np.dtype], Workspace] = {}

    def get(self, num_samples: int, dtype: np.dtype) -> Workspace:
        """Return the workspace for ``num_samples`` rows of ``dtype``, allocating it if needed."""
        key = (num_samples, np.dtype(dtype))
        workspace = self._cached.pop(key, None)
        if workspace is None:
            workspace = Workspace.allocate(num_samples, self._layers, key[1])
            if len(self._cached) >= _MAX_CACHED_WORKSPACES:
                self._cached.pop(next(iter(self._cached)))
        self._cached[key] = workspace
        return workspace
