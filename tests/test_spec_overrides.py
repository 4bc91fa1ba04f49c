"""--set overrides name list items the way error messages write field paths, or with dots."""

from __future__ import annotations

import pytest

from service.spec import apply_overrides


def _layers() -> dict:
    return {"layers": [{"units": 16}, {"units": 3}]}


@pytest.mark.parametrize("key", ["layers[0].units", "layers.0.units", " layers[0].units "])
def test_a_list_item_is_named_by_brackets_or_dots(key: str) -> None:
    assert apply_overrides(_layers(), [f"{key}=32"]) == {"layers": [{"units": 32}, {"units": 3}]}


def test_nested_brackets_reach_lists_of_lists() -> None:
    data = {"optimizer": {"schedule": {"milestones": [1, 2]}}, "grid": [[1, 2], [3, 4]]}
    out = apply_overrides(data, ["optimizer.schedule.milestones[1]=5", "grid[1][0]=9"])
    assert out == {"optimizer": {"schedule": {"milestones": [1, 5]}}, "grid": [[1, 2], [9, 4]]}
