"""--set overrides name list items the way error messages write field paths, or with dots."""

from __future__ import annotations

import re

import pytest

from service.errors import InvalidSpec
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


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("layers[5].units=3", "--set layers[5].units: index 5 is out of range (layers has 2 items)"),
        ("layers.5.units=3", "--set layers.5.units: index 5 is out of range (layers has 2 items)"),
        ("layers[2]={units: 2}", "--set layers[2]: index 2 is out of range (layers has 2 items)"),
        ("layers.units=3", "--set layers.units: layers is a list, so it has no field units; name an item "
         "by index, e.g. layers[0].units"),
        ("layers[0].units.x=3", "--set layers[0].units.x: layers[0].units is 16, so it has no field x"),
        ("epochs[0]=3", "--set epochs[0]: epochs is 1, not a list, so it has no item 0"),
        ("grid[0]=3", "--set grid[0]: grid is not in the file, so it has no item 0"),
    ],
)  # fmt: skip
def test_a_path_the_document_lacks_is_refused_in_the_users_words(override: str, message: str) -> None:
    """Errors keep the key as typed and say what is there instead of a Python repr."""
    with pytest.raises(InvalidSpec) as err:
        apply_overrides({"epochs": 1, **_layers()}, [override])
    assert str(err.value) == message


@pytest.mark.parametrize(
    "key", ["layers[0]units", "layers[-1].units", "layers[x].units", "layers]0[", "a..b", ".a"]
)
def test_a_malformed_key_is_refused(key: str) -> None:
    with pytest.raises(
        InvalidSpec, match=rf"^--set {re.escape(key)}: malformed key; .* e\.g\. layers\[0\]\.units=32"
    ):
        apply_overrides(_layers(), [f"{key}=3"])
