"""The fashion-mnist URI's copy under the data root obeys the same confinement as `idx:`: a
DATA_ROOT/fashion-mnist linking out of the root is refused before anything is read there, and an
incomplete one passed over for the system copy is logged."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from service.datasets import DatasetError, dataset_location, load_dataset
from service.datasets.probe import probe_dataset
from tests.test_data import NAMES, TRAIN_IMAGES, idx, idx_files, write

# Looks like an IDX file to no one: were it read, the wrong-magic error would quote 0x53454352 ("SECR").
SECRET = b"SECRET"


@pytest.fixture
def places(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(data root, a folder outside it holding unreadable "IDX" files, a valid system copy)."""
    root, outside, system = tmp_path / "root", tmp_path / "outside", tmp_path / "system"
    root.mkdir()
    write(outside, {f"./{name}": SECRET for name in NAMES.values()})
    write(system, idx_files("."))
    return root, outside, system


READERS = {
    "load": lambda root, search: load_dataset("fashion-mnist", root, extra_search=search),
    "probe": lambda root, search: probe_dataset("fashion-mnist", root, extra_search=search, max_bytes=10**6),
    "location": lambda root, search: dataset_location("fashion-mnist", root, extra_search=search),
}


@pytest.mark.parametrize("read", READERS.values(), ids=READERS.keys())
def test_a_fashion_mnist_link_out_of_the_data_root_is_refused_unread(places, read):
    """DATA_ROOT/fashion-mnist -> a folder outside is refused with idx:'s wording, naming the link
    and the fix, although a system copy exists; its files are never opened (no magic quoted)."""
    root, outside, system = places
    (root / "fashion-mnist").symlink_to(outside)
    with pytest.raises(DatasetError) as caught:
        read(root, [system])
    message = str(caught.value)
    assert message.startswith(
        f"dataset fashion-mnist: {root / 'fashion-mnist'}: the path leads outside the data "
    )
    assert f"remove it, then gradfleet fetch-data --dest {root / 'fashion-mnist'}" in message
    assert "server's own copy" in message
    assert "magic" not in message and "0x5345" not in message


def test_a_fashion_mnist_file_linking_out_of_the_data_root_is_refused(places):
    """A real DATA_ROOT/fashion-mnist folder whose image file links outside is refused too, at probe
    and at load, naming the file, without reading it."""
    root, outside, system = places
    write(root, idx_files("fashion-mnist"))
    (root / "fashion-mnist" / TRAIN_IMAGES).unlink()
    (root / "fashion-mnist" / TRAIN_IMAGES).symlink_to(outside / TRAIN_IMAGES)
    for read in (READERS["load"], READERS["probe"]):
        with pytest.raises(
            DatasetError, match=f"{TRAIN_IMAGES}: the path leads outside the data root"
        ) as caught:
            read(root, [system])
        assert "magic" not in str(caught.value)


def test_a_fashion_mnist_link_inside_the_data_root_is_followed(places):
    """A link to another folder inside the data root is fine: the data stays under the root."""
    root, _outside, system = places
    write(root, idx_files("fm-v2", **{NAMES["y_train"]: idx([2, 2, 2, 2])}))
    (root / "fashion-mnist").symlink_to("fm-v2")
    dataset = READERS["load"](root, [system])
    assert dataset.y_train.tolist() == [2, 2, 2, 2]
    assert str(root / "fm-v2") in dataset.source
    assert READERS["probe"](root, [system]).num_train == 4


def test_the_system_search_folders_may_lie_outside_the_data_root(places):
    """The server's own search folders are outside the data root by design and stay allowed."""
    root, _outside, system = places
    dataset = READERS["load"](root, [system])
    assert dataset.y_train.tolist() == [0, 1, 2, 1]
    assert str(system) in dataset.source


def test_a_partial_fashion_mnist_under_the_data_root_is_logged_once_when_passed_over(places, caplog):
    """DATA_ROOT/fashion-mnist with the train files only: the system copy is used, as the search
    order says, with a WARNING naming the folder and the missing files, once per state, not per
    submit."""
    root, _outside, system = places
    write(root, idx_files("fashion-mnist", **{NAMES["x_test"]: None, NAMES["y_test"]: None}))
    with caplog.at_level(logging.WARNING, logger="service.datasets.uri"):
        first = READERS["load"](root, [system])
        READERS["probe"](root, [system])
    assert str(system) in first.source
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"fashion-mnist: {root / 'fashion-mnist'} lacks t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte "
        f"(with or without .gz), so {system} is used instead; add the missing files (gradfleet fetch-data "
        f"--dest {root / 'fashion-mnist'}) or remove the folder"
    ]
    write(root, idx_files("fashion-mnist", **{NAMES["y_test"]: None}))  # a different gap: told again
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="service.datasets.uri"):
        READERS["location"](root, [system])
    assert [r.getMessage().split(" (with")[0] for r in caplog.records] == [
        f"fashion-mnist: {root / 'fashion-mnist'} lacks t10k-labels-idx1-ubyte"
    ]
