"""Learning-rate schedules: callables mapping a 0-based step index to a learning rate."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

SCHEDULES: tuple[str, ...] = ("constant", "step", "cosine")


@dataclass(frozen=True)
class ConstantSchedule:
    """``lr(step) = base_lr``."""

    base_lr: float

    def __call__(self, step: int) -> float:
        _check_step(step)
        return self.base_lr


@dataclass(frozen=True)
class StepSchedule:
    """``lr(step) = base_lr * gamma ** (step // steps_per_decay)``."""

    base_lr: float
    gamma: float
    steps_per_decay: int

    def __call__(self, step: int) -> float:
        _check_step(step)
        return self.base_lr * self.gamma ** (step // self.steps_per_decay)


@dataclass(frozen=True)
class CosineSchedule:
    """``lr(step) = min_lr + (base_lr - min_lr) * (1 + cos(pi * s / total_steps)) / 2`` with
    ``s = min(step, total_steps)``: ``base_lr`` at step 0, ``min_lr`` from ``total_steps`` on."""

    base_lr: float
    min_lr: float
    total_steps: int

    def __call__(self, step: int) -> float:
        _check_step(step)
        progress = min(step, self.total_steps) / self.total_steps
        return self.min_lr + (self.base_lr - self.min_lr) * (1.0 + math.cos(math.pi * progress)) / 2


def make_schedule(
    kind: str,
    base_lr: float,
    *,
    steps_per_epoch: int,
    total_steps: int,
    gamma: float = 0.1,
    step_epochs: int = 1,
    min_lr: float = 0.0,
) -> Callable[[int], float]:
    """Return the schedule ``kind`` (one of ``SCHEDULES``) as a callable ``step -> lr``.

    ``"step"`` multiplies by ``gamma`` every ``step_epochs * steps_per_epoch`` steps; ``"cosine"``
    anneals from ``base_lr`` to ``min_lr`` over ``total_steps``.
    """
    _check_non_negative("base_lr", base_lr)
    if steps_per_epoch < 1 or total_steps < 1 or step_epochs < 1:
        raise ValueError(
            f"Invalid schedule lengths: steps_per_epoch={steps_per_epoch}, "
            f"total_steps={total_steps}, step_epochs={step_epochs}"
        )
    if kind == "constant":
        return ConstantSchedule(base_lr)
    if kind == "step":
        _check_non_negative("gamma", gamma)
        return StepSchedule(base_lr, gamma, step_epochs * steps_per_epoch)
    if kind == "cosine":
        _check_non_negative("min_lr", min_lr)
        return CosineSchedule(base_lr, min_lr, total_steps)
    raise ValueError(f"Unknown schedule: {kind!r}; expected one of {SCHEDULES}")


def _check_non_negative(name: str, value: float) -> None:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"Invalid {name}: {value}")


def _check_step(step: int) -> None:
    if step < 0:
        raise ValueError(f"Invalid step: {step}; steps are 0-based")
