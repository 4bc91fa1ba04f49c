"""A state folder that refuses writes (a full disk, no permission, a file where a folder belongs): each
failure names the file, the problem and the fix, with a status that is not INTERNAL; and what a killed
coordinator left half written is cleaned up at the next start."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import grpc
import numpy as np
import pytest

from gradfleet.v1 import coordinator_pb2 as pb
from service.checkpoints import CheckpointStore
from service.durable import write_durably, write_error
from service.errors import StateNotWritable
from service.export import write_model
from service.jobs import JobStore
from service.spec_defaults import with_defaults
from tests.conftest import start_coordinator
from tests.helpers import small_spec, wait_for, write_blobs
from tests.test_durability import _runner, make_checkpoint

DEV_FULL = Path("/dev/full")  # every write to it fails with ENOSPC


@pytest.fixture
def spec() -> pb.JobSpec:
    return with_defaults(small_spec("npz:blobs.npz"))


def temp_file_of(path: Path) -> Path:
    """The temporary file write_durably writes `path` through, in this process."""
    return path.parent / f".{path.name}.{os.getpid()}.tmp"


def fill_with_dev_full(path: Path) -> None:
    """Make the next write of `path` by this process hit a full disk: its temporary file is /dev/full."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp_file_of(path).symlink_to(DEV_FULL)


def test_a_full_disk_names_the_file_the_problem_and_the_fix(tmp_path: Path) -> None:
    target = tmp_path / "models" / "job1.npz"
    fill_with_dev_full(target)
    with pytest.raises(StateNotWritable) as refused:
        write_durably(target, b"x" * 100_000, "the model")
    error = refused.value
    assert error.message == (
        f"cannot write the model {target}: no space left on device (ENOSPC); "
        "free space on that disk, or move --state-dir to a disk with room"
    )
    assert error.disk_full and error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert not target.exists() and not temp_file_of(target).exists()


def test_a_file_where_the_checkpoint_folder_belongs_is_named(tmp_path: Path, spec) -> None:
    store = CheckpointStore(tmp_path, "job1")
    store.folder.parent.mkdir(parents=True)
    store.folder.write_text("not a folder")
    with pytest.raises(StateNotWritable) as refused:
        store.save(make_checkpoint(10, spec))
    assert refused.value.message == (
        f"cannot write the checkpoint {store.folder / 'step-000000000010.ckpt'}: {store.folder} is a file "
        f"where a folder is expected; move {store.folder} aside, or choose another --state-dir"
    )
    assert refused.value.code == grpc.StatusCode.UNAVAILABLE


def test_permission_denied_names_the_folder_to_fix_not_the_temporary_file(tmp_path: Path) -> None:
    """Tests run as root, whom no mode stops; the wording of the OSError the OS gives anyone else."""
    target = tmp_path / "checkpoints" / "job1" / "step-000000000470.ckpt"
    target.parent.mkdir(parents=True)
    denied = PermissionError(errno.EACCES, "Permission denied", str(temp_file_of(target)))
    error = write_error(target, denied, "the checkpoint")
    assert error.message == (
        f"cannot write the checkpoint {target}: permission denied (EACCES); let the coordinator's user "
        f"write to {target.parent} (its permissions, a read-only mount), or choose another --state-dir"
    )
    assert error.code == grpc.StatusCode.UNAVAILABLE


def test_a_full_job_store_refuses_a_new_job_and_keeps_the_old_ones_as_they_were(tmp_path: Path, spec) -> None:
    store = JobStore(tmp_path)
    first, _ = store.create(spec)
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages}")  # sqlite's own "database or disk is full"
    with pytest.raises(StateNotWritable) as refused:
        for n in range(1000):  # until the pages it has are full
            store.create(with_defaults(small_spec("npz:blobs.npz", name=f"job {n}" + "x" * 200)))
    assert refused.value.disk_full and refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.value.message.startswith(
        f"cannot write the job store {tmp_path / 'jobs.sqlite3'}: database or disk is full; free space"
    )
    before = store.get(first.id)
    with pytest.raises(StateNotWritable):
        store.update(first.id, lambda j: setattr(j, "message", "m" * 20_000))  # needs pages it lacks
    assert store.get(first.id) == before  # what a client sees is what is on disk
    count = len(store.list(page_size=1000)[0])
    store.close()
    reopened = JobStore(tmp_path)
    assert len(reopened.list(page_size=1000)[0]) == count and reopened.get(first.id) == before
    reopened.close()


def test_a_read_only_job_store_says_so(tmp_path: Path, spec) -> None:
    store = JobStore(tmp_path)
    job, _ = store.create(spec)
    store._db.execute("PRAGMA query_only = ON")
    with pytest.raises(StateNotWritable) as refused:
        store.request_cancel(job.id)
    assert refused.value.code == grpc.StatusCode.UNAVAILABLE
    assert refused.value.message.startswith(
        f"cannot write the job store {tmp_path / 'jobs.sqlite3'}: attempt to write a readonly database; "
        f"let the coordinator's user write to {tmp_path}"
    )
    assert not store.cancel_requested(job.id)


def test_a_final_state_the_store_refuses_is_shown_and_the_job_runs_again_at_the_next_start(
    tmp_path: Path, spec
) -> None:
    """A job that ends while its store cannot be written shows its end (it would otherwise read
    RUNNING for good); on disk it stays as last written, so the next start runs it again."""
    runner = _runner(tmp_path, spec)
    runner.store._db.execute("PRAGMA query_only = ON")
    assert runner._finish(pb.FAILED, "cannot write the checkpoint ...") == pb.FAILED
    shown = runner.store.get(runner.job_id)
    assert (shown.state, shown.message) == (pb.FAILED, "cannot write the checkpoint ...")
    assert not runner._saved  # so a SUCCEEDED one keeps its checkpoints
    runner._writer.close()
    assert JobStore(tmp_path).get(runner.job_id).state == pb.QUEUED


@pytest.mark.integration
@pytest.mark.ray
def test_submit_to_a_store_that_cannot_be_written_is_unavailable_naming_it(ray_session, tmp_path) -> None:
    """A coordinator whose job store cannot be written answers SubmitJob with UNAVAILABLE naming the
    store and what to do, not INTERNAL."""
    from service.client import CoordinatorClient

    server = start_coordinator(tmp_path, metrics_port=-1)
    write_blobs(server.config.data_root / "blobs.npz")
    try:
        server.store._db.execute("PRAGMA query_only = ON")
        with CoordinatorClient(server.address) as client, pytest.raises(grpc.RpcError) as refused:
            client.submit(small_spec("npz:blobs.npz"), retry_delays=())
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value.details()
        assert refused.value.details().startswith(
            f"cannot write the job store {tmp_path / 'state' / 'jobs.sqlite3'}: attempt to write a readonly"
        )
    finally:
        server.store._db.execute("PRAGMA query_only = OFF")
        server.stop(grace_s=1.0)


@pytest.mark.integration
@pytest.mark.ray
@pytest.mark.parametrize("what", ["checkpoint", "model"])
def test_a_job_whose_file_meets_a_full_disk_fails_naming_it(ray_session, tmp_path, what) -> None:
    """A checkpoint or the final model written to a full disk fails the job with a message naming the
    file and the problem, not an "internal error"."""
    from service.client import CoordinatorClient

    server = start_coordinator(tmp_path, metrics_port=-1)
    write_blobs(server.config.data_root / "blobs.npz", n_train=200)  # 4 steps per epoch at batch 50
    state = server.config.state_dir
    try:
        with CoordinatorClient(server.address) as client:
            job = client.submit(small_spec("npz:blobs.npz", epochs=2))
            # Before its first checkpoint, at step 4: loading the data and starting actors take longer.
            if what == "checkpoint":
                target = state / "checkpoints" / job.id / "step-000000000004.ckpt"
            else:
                target = state / "models" / f"{job.id}.npz"
            fill_with_dev_full(target)
            done = wait_for(client, job.id, timeout_s=120)
    finally:
        server.stop(grace_s=1.0)
    assert done.state == pb.FAILED
    assert done.message.startswith(
        f"cannot write the {what} {target}: no space left on device (ENOSPC); free space on that disk"
    ), done.message
    if what == "checkpoint":
        assert done.progress.checkpoint_step == 0  # it never landed
    else:
        assert done.progress.step == done.progress.total_steps == 8


@pytest.mark.integration
@pytest.mark.ray
def test_a_model_left_half_written_by_a_killed_coordinator_is_removed_at_start(ray_session, tmp_path) -> None:
    models = tmp_path / "state" / "models"
    models.mkdir(parents=True)
    write_model(models / "done.npz", {"layer_0_weight": np.ones((2, 3), np.float32)})
    left = models / ".abc123.npz.4242.tmp"  # a SIGKILL during the final model's write
    left.write_bytes(b"half")
    server = start_coordinator(tmp_path, metrics_port=-1)
    server.stop(grace_s=1.0)
    assert sorted(p.name for p in models.iterdir()) == ["done.npz"]
