"""A dataset file that is a FIFO (or another non-regular file) is refused by name at submit and at load,
never opened blocking: opening a FIFO without a writer waits forever, pinning a server thread, and a
job reading one could be neither finished nor cancelled."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from gradfleet.v1 import coordinator_pb2 as pb
from service.datasets import DatasetError, load_dataset
from service.datasets.probe import probe_dataset
from service.datasets.tabular import check_csv_prefix, check_npz_features
from tests.helpers import small_spec, wait_for, write_blobs
from tests.test_data import NAMES, idx_files, write

REFUSAL = "is not a regular file (it is a FIFO)"


@pytest.fixture
def make_fifo() -> Iterator[Callable[[Path], Path]]:
    """Makes FIFOs; afterwards opens each for writing once, so that a reader a broken open left
    blocked on it gets EOF and its thread ends (otherwise a failing test would hang at exit)."""
    made: list[Path] = []

    def make(path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            path.unlink()
        os.mkfifo(path)
        made.append(path)
        return path

    yield make
    for path in made:
        with contextlib.suppress(OSError):  # ENXIO: no reader waits on it, as it should be
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))


def _within(seconds: float, call: Callable[[], object]) -> BaseException | None:
    """What `call` raised (None if nothing), failing the test if it is still blocked after `seconds`."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"still blocked after {seconds} s"
    return outcome[0]


def _probe(uri: str, root: Path) -> None:
    probe_dataset(uri, root, extra_search=(), max_bytes=1 << 30)


# (uri, the file made a FIFO, the submit-time check the admission makes)
CASES = {
    "npz": ("npz:d.npz", "d.npz", lambda root: check_npz_features(root / "d.npz", 1 << 20)),
    "npz-probe": ("npz:d.npz", "d.npz", lambda root: _probe("npz:d.npz", root)),
    "csv": ("csv:d.csv", "d.csv", lambda root: check_csv_prefix(root / "d.csv", 1 << 20)),
    **{
        f"idx-{key}": ("idx:d", f"d/{name}", lambda root: _probe("idx:d", root))
        for key, name in NAMES.items()
    },
    "fashion-mnist": (
        "fashion-mnist",
        f"fashion-mnist/{NAMES['y_test']}",
        lambda root: _probe("fashion-mnist", root),
    ),
}


@pytest.mark.parametrize(("uri", "fifo", "check"), CASES.values(), ids=CASES.keys())
def test_a_fifo_is_refused_by_name_at_submit_and_at_load(tmp_path, make_fifo, uri, fifo, check):
    """Each reader refuses a FIFO at once, naming it, whether the submit-time check or the load meets
    it (a file swapped for one after submit): every form, and each of an idx folder's files."""
    write(tmp_path, idx_files("d") | idx_files("fashion-mnist"))
    make_fifo(tmp_path / fifo)
    for read in (lambda: check(tmp_path), lambda: load_dataset(uri, tmp_path, extra_search=())):
        error = _within(5, read)
        assert isinstance(error, DatasetError), error
        assert f"{tmp_path / fifo}: {REFUSAL}" in str(error)


def test_a_folder_given_as_a_file_is_refused_as_not_a_regular_file(tmp_path):
    (tmp_path / "d.csv").mkdir()
    with pytest.raises(DatasetError, match=r"d.csv: is not a regular file \(it is a folder\)"):
        load_dataset("csv:d.csv", tmp_path, extra_search=())


@pytest.mark.integration
@pytest.mark.ray
def test_submit_refuses_a_fifo_and_a_job_meeting_one_at_load_fails(client, coordinator, make_fifo):
    """SubmitJob answers INVALID_ARGUMENT for a FIFO at once; a queued job whose file became a FIFO
    after its submit FAILS when it loads it, and the job after it runs."""
    root = coordinator.config.data_root
    make_fifo(root / "fifo.csv")
    refused = _within(10, lambda: client.submit(small_spec("csv:fifo.csv")))
    assert isinstance(refused, grpc.RpcError), refused
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"fifo.csv: {REFUSAL}" in refused.details()

    write_blobs(root / "blobs.npz")
    write_blobs(root / "swapped.npz")
    blocker = client.submit(small_spec("npz:blobs.npz", name="blocker", epochs=1000, batchSize=10))
    wait_for(client, blocker.id, states={pb.RUNNING}, timeout_s=60)
    swapped = client.submit(small_spec("npz:swapped.npz", name="swapped"))
    after = client.submit(small_spec("npz:blobs.npz", name="after", epochs=1))
    make_fifo(root / "swapped.npz")
    client.cancel(blocker.id)
    failed = wait_for(client, swapped.id, timeout_s=60)
    assert failed.state == pb.FAILED
    assert f"swapped.npz: {REFUSAL}" in failed.message
    assert wait_for(client, after.id, timeout_s=120).state == pb.SUCCEEDED
