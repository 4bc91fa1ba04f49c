"""Learning-rate schedules: callables mapping a 0-based step index to a learning rate.

Any schedule can have a linear warmup in front: for ``step < W`` the rate climbs as
``inner(0) * (step + 1) / W``, then ``inner(step - W)`` follows, with the inner schedule's length
shortened by ``W`` so that it still ends with the job.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

Schedule = Callable[[int], float]

SCHEDULES: tuple[str, ...] = ("constant", "step", "multi_step", "exponential", "cosine", "one_cycle")


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
class MultiStepSchedule:
    """``lr(step) = base_lr * gamma ** (number of milestones <= step)``; milestones in steps."""

    base_lr: float
    gamma: float
    milestones: tuple[int, ...]

    def __call__(self, step: int) -> float:
        _check_step(step)
        return self.base_lr * self.gamma ** bisect.bisect_right(self.milestones, step)


@dataclass(frozen=True)
class ExponentialSchedule:
    """``lr(step) = base_lr * gamma ** (step / steps_per_epoch)``: ``gamma`` per epoch, smoothly."""

    base_lr: float
    gamma: float
    steps_per_epoch: int

    def __call__(self, step: int) -> float:
        _check_step(step)
        return self.base_lr * self.gamma ** (step / self.steps_per_epoch)


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
        return _cosine_between(self.base_lr, self.min_lr, progress)


@dataclass(frozen=True)
class OneCycleSchedule:
    """One-cycle (Smith & Topin, 2019), as PyTorch's ``OneCycleLR`` with cosine annealing:
    from ``max_lr / div_factor`` up to ``max_lr`` over the first ``pct_start`` of the steps, then
    down to ``max_lr / (div_factor * final_div_factor)`` at the last step. The phases end at steps
    ``pct_start * total_steps - 1`` and ``total_steps - 1``; later steps keep the final rate."""

    max_lr: float
    total_steps: int
    pct_start: float
    div_factor: float
    final_div_factor: float

    def __call__(self, step: int) -> float:
        _check_step(step)
        initial = self.max_lr / self.div_factor
        final = initial / self.final_div_factor
        peak_step = self.pct_start * self.total_steps - 1
        last_step = self.total_steps - 1
        if step <= peak_step:
            return _cosine_between(initial, self.max_lr, step / peak_step if peak_step > 0 else 1.0)
        span = last_step - peak_step
        progress = min(1.0, (step - peak_step) / span) if span > 0 else 1.0
        return _cosine_between(self.max_lr, final, progress)


@dataclass(frozen=True)
class WarmupSchedule:
    """``inner(0) * (step + 1) / warmup_steps`` for ``step < warmup_steps``, then
    ``inner(step - warmup_steps)``."""

    inner: Schedule
    warmup_steps: int

    def __call__(self, step: int) -> float:
        _check_step(step)
        if step < self.warmup_steps:
            return self.inner(0) * (step + 1) / self.warmup_steps
        return self.inner(step - self.warmup_steps)


def make_schedule(
    kind: str,
    base_lr: float,
    *,
    steps_per_epoch: int,
    total_steps: int,
    gamma: float = 0.1,
    step_epochs: int = 1,
    min_lr: float = 0.0,
    milestones: Sequence[int] = (),
    warmup_steps: int = 0,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> Schedule:
    """Return the schedule ``kind`` (one of ``SCHEDULES``) as a callable ``step -> lr``.

    ``"step"`` multiplies by ``gamma`` every ``step_epochs * steps_per_epoch`` steps;
    ``"multi_step"`` by ``gamma`` at each of the ``milestones`` (epochs, increasing);
    ``"exponential"`` by ``gamma`` per epoch, smoothly; ``"cosine"`` anneals from ``base_lr`` to
    ``min_lr`` over ``total_steps``; ``"one_cycle"`` peaks at ``base_lr`` (see
    ``OneCycleSchedule``). ``warmup_steps > 0`` puts a linear warmup in front.
    """
    _check_non_negative("base_lr", base_lr)
    if steps_per_epoch < 1 or total_steps < 1 or step_epochs < 1 or warmup_steps < 0:
        raise ValueError(
            f"Invalid schedule lengths: steps_per_epoch={steps_per_epoch}, total_steps={total_steps}, "
            f"step_epochs={step_epochs}, warmup_steps={warmup_steps}"
        )
    if kind not in SCHEDULES:
        raise ValueError(f"Unknown schedule: {kind!r}; expected one of {SCHEDULES}")
    inner_steps = max(1, total_steps - warmup_steps)
    inner = _make_inner(
        kind,
        base_lr,
        steps_per_epoch,
        inner_steps,
        gamma=gamma,
        step_epochs=step_epochs,
        min_lr=min_lr,
        milestones=milestones,
        one_cycle=(pct_start, div_factor, final_div_factor),
    )
    return WarmupSchedule(inner, warmup_steps) if warmup_steps else inner


def _make_inner(
    kind: str,
    base_lr: float,
    steps_per_epoch: int,
    total_steps: int,
    *,
    gamma: float,
    step_epochs: int,
    min_lr: float,
    milestones: Sequence[int],
    one_cycle: tuple[float, float, float],
) -> Schedule:
    if kind in ("step", "multi_step", "exponential"):
        _check_non_negative("gamma", gamma)
    if kind == "constant":
        return ConstantSchedule(base_lr)
    if kind == "step":
        return StepSchedule(base_lr, gamma, step_epochs * steps_per_epoch)
    if kind == "multi_step":
        epochs = [int(m) for m in milestones]
        if not epochs or min(epochs) < 1 or any(a >= b for a, b in itertools.pairwise(epochs)):
            raise ValueError(f"Invalid milestones: {list(milestones)}; need increasing epochs >= 1")
        return MultiStepSchedule(base_lr, gamma, tuple(m * steps_per_epoch for m in epochs))
    if kind == "exponential":
        return ExponentialSchedule(base_lr, gamma, steps_per_epoch)
    if kind == "cosine":
        _check_non_negative("min_lr", min_lr)
        return CosineSchedule(base_lr, min_lr, total_steps)
    pct_start, div_factor, final_div_factor = one_cycle
    if not (0 < pct_start < 1) or not (div_factor >= 1) or not (final_div_factor >= 1):
        raise ValueError(
            f"Invalid one-cycle shape: pct_start={pct_start} (in (0, 1)), div_factor={div_factor} "
            f"and final_div_factor={final_div_factor} (>= 1)"
        )
    return OneCycleSchedule(base_lr, total_steps, pct_start, div_factor, final_div_factor)


def _cosine_between(start: float, end: float, progress: float) -> float:
    """``end + (start - end) (1 + cos(pi progress)) / 2``: ``start`` at 0, ``end`` at 1."""
    return end + (start - end) * (1.0 + math.cos(math.pi * progress)) / 2


def _check_non_negative(name: str, value: float) -> None:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"Invalid {name}: {value}")


def _check_step(step: int) -> None:
    if step < 0:
        raise ValueError(f"Invalid step: {step}; steps are 0-based")
