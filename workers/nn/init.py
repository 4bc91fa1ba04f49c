"""Weight initialisers: fill a ``(fan_in, fan_out)`` weight in place from an injected generator.

==============  ==============================================
name            distribution
==============  ==============================================
he_normal       ``N(0, 2 / fan_in)``
he_uniform      ``U(-sqrt(6 / fan_in), +sqrt(6 / fan_in))``
glorot_normal   ``N(0, 2 / (fan_in + fan_out))``
glorot_uniform  ``U(-sqrt(6 / (fan_in + fan_out)), +...)``
auto            he_normal for ReLU-like activations, else glorot_uniform
==============  ==============================================
"""

from __future__ import annotations

import math

import numpy as np

from .activations import RELU_LIKE

INITIALIZERS: tuple[str, ...] = ("auto", "he_normal", "he_uniform", "glorot_normal", "glorot_uniform")


def resolve_initializer(name: str, activation: str) -> str:
    """The concrete initialiser for ``name`` (``"auto"`` picks by ``activation``)."""
    if name not in INITIALIZERS:
        raise ValueError(f"Unknown initializer: {name!r}; expected one of {INITIALIZERS}")
    if name != "auto":
        return name
    return "he_normal" if activation in RELU_LIKE else "glorot_uniform"


def initialize(weight: np.ndarray, name: str, rng: np.random.Generator) -> None:
    """Fill ``weight`` ``(fan_in, fan_out)`` in place with the concrete initialiser ``name``."""
    fan_in, fan_out = weight.shape
    denominator = fan_in if name.startswith("he_") else fan_in + fan_out
    if name.endswith("_normal"):
        rng.standard_normal(out=weight, dtype=weight.dtype)
        weight *= math.sqrt(2.0 / denominator)
        return
    rng.random(out=weight, dtype=weight.dtype)
    weight *= 2.0
    weight -= 1.0
    weight *= math.sqrt(6.0 / denominator)
