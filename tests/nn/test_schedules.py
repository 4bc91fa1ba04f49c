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
    with pytest.raises(ValueError, match="Unknown schedule: 'polynomial'"):
        make_schedule("polynomial", 0.1, steps_per_epoch=1, total_steps=1)
    with pytest.raises(ValueError, match="steps_per_epoch=0"):
        make_schedule("step", 0.1, steps_per_epoch=0, total_steps=1)
    with pytest.raises(ValueError, match=r"Invalid base_lr: -0\.1"):
        make_schedule("constant", -0.1, steps_per_epoch=1, total_steps=1)
    schedule = make_schedule("cosine", 0.1, steps_per_epoch=1, total_steps=1)
    with pytest.raises(ValueError, match="Invalid step: -1"):
        schedule(-1)


def test_multi_step_schedule_decays_at_each_milestone_epoch() -> None:
    """Milestones [2, 5] with 10 steps per epoch multiply the rate by gamma at steps 20 and 50."""
    schedule = make_schedule(
        "multi_step", 1.0, steps_per_epoch=10, total_steps=100, gamma=0.5, milestones=[2, 5]
    )
    values = [schedule(step) for step in (0, 19, 20, 49, 50, 99)]
    assert values == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]


def test_exponential_schedule_decays_gamma_per_epoch_smoothly() -> None:
    """The exponential schedule gives base * gamma at one epoch and base * sqrt(gamma) at half of one."""
    schedule = make_schedule("exponential", 0.1, steps_per_epoch=10, total_steps=100, gamma=0.25)
    assert schedule(0) == 0.1
    assert schedule(5) == pytest.approx(0.05) and schedule(10) == pytest.approx(0.025)


def test_one_cycle_matches_the_published_shape() -> None:
    """One-cycle starts at max/25, peaks at max at step pct*total - 1, ends at max/(25*1e4)."""
    total, peak_step = 100, 29  # pct_start 0.3
    schedule = make_schedule("one_cycle", 0.5, steps_per_epoch=10, total_steps=total)
    assert schedule(0) == pytest.approx(0.02)
    assert schedule(peak_step) == pytest.approx(0.5)
    middle_up = 0.5 + (0.02 - 0.5) * (1 + math.cos(math.pi * 14 / 29)) / 2
    assert schedule(14) == pytest.approx(middle_up)
    assert schedule(total - 1) == pytest.approx(0.02 / 1e4)
    assert max(schedule(step) for step in range(total)) == pytest.approx(0.5)


def test_warmup_ramps_linearly_then_runs_the_shortened_schedule() -> None:
    """Warmup of 4 steps gives lr/4, 2lr/4, 3lr/4, lr, then cosine over the remaining 96 steps."""
    schedule = make_schedule("cosine", 0.1, steps_per_epoch=10, total_steps=100, warmup_steps=4)
    assert [schedule(step) for step in range(4)] == pytest.approx([0.025, 0.05, 0.075, 0.1])
    assert schedule(4) == pytest.approx(0.1)
    assert schedule(4 + 48) == pytest.approx(0.05) and schedule(100) == pytest.approx(0.0)


def test_invalid_new_schedule_options_are_rejected() -> None:
    """Empty or decreasing milestones and a one-cycle pct_start outside (0, 1) raise ValueError."""
    with pytest.raises(ValueError, match="Invalid milestones"):
        make_schedule("multi_step", 0.1, steps_per_epoch=1, total_steps=9, milestones=[3, 2])
    with pytest.raises(ValueError, match=r"pct_start=1\.5"):
        make_schedule("one_cycle", 0.1, steps_per_epoch=1, total_steps=9, pct_start=1.5)
