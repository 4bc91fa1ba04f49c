"""Learning-rate schedules at specific steps."""

import math

import pytest

from workers.nn import make_schedule


def test_constant_schedule_never_changes() -> None:
    """The constant schedule returns base_lr at every step."""
    schedule = make_schedule("constant", 0.01, steps_per_epoch=10, total_steps=100)
    assert [schedule(step) for step in (0, 50, 10_000)] == [0.01, 0.01, 0.01]


def test_step_schedule_decays_every_step_epochs() -> None:
    """With 10 steps per epoch and step_epochs=2, lr halves at steps 20, 40, ..."""
    schedule = make_schedule("step", 0.1, steps_per_epoch=10, total_steps=100, gamma=0.5, step_epochs=2)
    values = [schedule(step) for step in (0, 19, 20, 39, 40, 99)]
    assert values == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.1 * 0.5**4])


def test_cosine_schedule_anneals_from_base_to_min() -> None:
    """Cosine gives base_lr at 0, the midpoint at total/2, min_lr at and after total_steps."""
    schedule = make_schedule("cosine", 0.1, steps_per_epoch=5, total_steps=100, min_lr=0.01)
    assert schedule(0) == pytest.approx(0.1)
    assert schedule(25) == pytest.approx(0.01 + 0.09 * (1 + math.cos(math.pi / 4)) / 2)
    assert schedule(50) == pytest.approx(0.055)
    assert schedule(100) == pytest.approx(0.01) and schedule(500) == pytest.approx(0.01)


def test_invalid_schedules_are_rejected() -> None:
    """Unknown kinds, non-positive lengths, negative rates and negative steps raise ValueError."""
    with pytest.raises(ValueError, match="Unknown schedule: 'linear'"):
        make_schedule("linear", 0.1, steps_per_epoch=1, total_steps=1)
    with pytest.raises(ValueError, match="steps_per_epoch=0"):
        make_schedule("step", 0.1, steps_per_epoch=0, total_steps=1)
    with pytest.raises(ValueError, match=r"Invalid base_lr: -0\.1"):
        make_schedule("constant", -0.1, steps_per_epoch=1, total_steps=1)
    schedule = make_schedule("cosine", 0.1, steps_per_epoch=1, total_steps=1)
    with pytest.raises(ValueError, match="Invalid step: -1"):
        schedule(-1)
