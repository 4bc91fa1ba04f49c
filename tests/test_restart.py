"""A coordinator restarted on the same state folder keeps its jobs: unfinished ones run again to the end,
finished ones keep their records and models."""

from __future__ import annotations

import io
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gradfleet.v1 import coordinator_pb2 as pb
from service.checkpoints import CheckpointStore
from service.cli_watch import Renderer
from service.client import CoordinatorClient
from service.config import ServerConfig
from service.job_changes import preparing_note
from service.jobs import JobStore
from tests.helpers import (
    assert_identical,
    model_weights,
    reference_weights,
    small_spec,
    wait_for,
    write_blobs,
    write_broken,
)

pytestmark = [pytest.mark.integration, pytest.mark.ray]
N_TRAIN = 600


@pytest.fixture
def config(ray_session, tmp_path: Path) -> ServerConfig:
    data_root = tmp_path / "data"
    data_root.mkdir()
    write_blobs(data_root / "blobs.npz", n_train=N_TRAIN)
    return ServerConfig(port=0, metrics_port=-1, state_dir=tmp_path / "state", data_root=data_root)


@contextmanager
def running_coordinator(config: ServerConfig) -> Iterator[CoordinatorClient]:
    """A coordinator on `config` (a fresh port each time) and a client; stopped on exit."""
    from service.server import start_server

    server = start_server(config)
    try:
        with CoordinatorClient(server.address) as client:
            yield client
    finally:
        server.stop(grace_s=1.0)


def stored_jobs(state_dir: Path) -> dict[str, pb.Job]:
    """The job records on disk, read as a new coordinator would read them."""
    store = JobStore(state_dir)
    try:
        return {job.id: job for job in store.list(page_size=1000)[0]}
    finally:
        store.close()


def test_unfinished_jobs_survive_a_restart_and_run_to_the_end(config) -> None:
    """A job interrupted while training and one still queued are both QUEUED on disk after a stop, and
    a new coordinator on the same state folder trains both to SUCCEEDED, counting samples once."""
    with running_coordinator(config) as client:
        interrupted = client.submit(small_spec("npz:blobs.npz", name="interrupted", batchSize=10, epochs=6))
        wait_for(client, interrupted.id, states={pb.RUNNING}, timeout_s=60)
        while client.get(interrupted.id).progress.step == 0:
            time.sleep(0.02)
        queued = client.submit(small_spec("npz:blobs.npz", name="queued"))
        assert queued.state == pb.QUEUED  # one job runs at a time by default

    on_disk = stored_jobs(config.state_dir)
    assert on_disk[interrupted.id].state == pb.QUEUED
    assert "interrupted by a coordinator shutdown" in on_disk[interrupted.id].message
    assert on_disk[queued.id].state == pb.QUEUED

    with running_coordinator(config) as client:
        assert [j.id for j in client.list()] == [queued.id, interrupted.id]
        for job, epochs in ((interrupted, 6), (queued, 2)):
            done = wait_for(client, job.id)
            assert done.state == pb.SUCCEEDED, done.message
            assert done.progress.step == done.progress.total_steps
            assert done.progress.samples_trained == epochs * N_TRAIN  # restarted from scratch, not added
            assert done.spec == job.spec


def test_finished_jobs_and_their_models_survive_a_restart(config, tmp_path: Path) -> None:
    """After a restart a finished job reads the same and its model downloads byte for byte as before."""
    with running_coordinator(config) as client:
        done = wait_for(client, client.submit(small_spec("npz:blobs.npz", name="done")).id)
        assert done.state == pb.SUCCEEDED, done.message
        write_broken(config.data_root / "broken.npz")
        failed = wait_for(client, client.submit(small_spec("npz:broken.npz", name="failed")).id)
        assert failed.state == pb.FAILED
        client.download(done.id, tmp_path / "before.npz")

    with running_coordinator(config) as client:
        assert client.get(done.id) == done
        assert client.get(failed.id) == failed
        assert [j.id for j in client.list()] == [failed.id, done.id]
        size = client.download(done.id, tmp_path / "after.npz")
    before = (tmp_path / "before.npz").read_bytes()
    assert size == len(before) > 0
    assert (tmp_path / "after.npz").read_bytes() == before


def damage(path: Path, how: str) -> None:
    """Flip bytes in the middle of a checkpoint file, or cut it to half its length."""
    blob = bytearray(path.read_bytes())
    if how == "flipped":
        middle = len(blob) // 2
        blob[middle : middle + 8] = bytes(b ^ 0xFF for b in blob[middle : middle + 8])
    else:
        del blob[len(blob) // 2 :]
    path.write_bytes(bytes(blob))


@pytest.mark.parametrize("how", ["flipped", "truncated"])
def test_a_damaged_newest_checkpoint_is_skipped_for_the_one_before(config, how) -> None:
    """A job whose newest checkpoint is corrupt or truncated after a stop resumes from the previous
    one, says which file it skipped and why, and ends with the weights of an uninterrupted run."""
    spec = small_spec("npz:blobs.npz", name="damaged", batchSize=10, epochs=4, checkpointEverySteps=20)
    with running_coordinator(config) as client:
        job = client.submit(spec)
        while client.get(job.id).progress.checkpoint_step < 40:
            time.sleep(0.01)
    newest, previous = CheckpointStore(config.state_dir, job.id).files()
    assert stored_jobs(config.state_dir)[job.id].state == pb.QUEUED
    damage(newest, how)

    with running_coordinator(config) as client:
        events = list(client.watch(job.id))
        got = model_weights(client, job.id, config.state_dir / "resumed.npz")
        assert_identical(
            got, reference_weights(client, spec, config.data_root / "blobs.npz", config.state_dir)
        )
    resumed_step = int(previous.name.removeprefix("step-").removesuffix(".ckpt"))
    note = f"resumed from the checkpoint at step {resumed_step} (skipped unusable newer ones: {newest.name}: "
    notes = [e.job.message for e in events if e.job.message.startswith(note)]
    assert notes and notes[0].endswith("(truncated or corrupt))"), [e.job.message for e in events]
    done = events[-1].job
    assert done.state == pb.SUCCEEDED, done.message
    assert done.progress.samples_trained == 4 * N_TRAIN


def test_a_job_resumed_at_an_evaluation_point_evaluates_there_first(config, monkeypatch) -> None:
    """Checkpoints come before the evaluation of their step, so a stop can fall between the two; the
    resumed job evaluates at its checkpoint before training on (at the last step, its final accuracy
    would otherwise be the previous epoch's)."""
    # Each train call then runs to the next evaluation point, so the shutdown checkpoint (taken after
    # the call sent ahead) lands on one however slow the machine (a 0.5 s call could stop mid-epoch).
    monkeypatch.setattr("service.runner.REPORT_INTERVAL_S", 60.0)
    epoch_steps = N_TRAIN // 10
    spec = small_spec("npz:blobs.npz", batchSize=10, epochs=6, checkpointEverySteps=epoch_steps)
    with running_coordinator(config) as client:
        job = client.submit(spec)
        while client.get(job.id).progress.checkpoint_step < epoch_steps:
            time.sleep(0.01)

    with running_coordinator(config) as client:
        events = list(client.watch(job.id))
    # A STATE event, so that `gradfleet watch` prints it (it shows the messages of STATE events only).
    states = [e.job.message for e in events if e.kind == pb.JobEvent.STATE and e.job.state == pb.RUNNING]
    resumed = [m for m in states if m.startswith("resumed from the checkpoint")]
    assert resumed, [(e.kind, e.job.message) for e in events]
    step = int(resumed[0].removeprefix("resumed from the checkpoint at step ").split()[0])
    assert step % epoch_steps == 0
    shown = io.StringIO()
    renderer = Renderer(shown, tty=False)
    for event in events:
        renderer.show(event)
    assert f"job {job.id} RUNNING: resumed from the checkpoint at step {step}\n" in shown.getvalue()
    preparing = f"preparing data and workers to resume from the checkpoint at step {step}"
    assert set(states[: states.index(resumed[0])]) <= {preparing}, states  # if the watch came that early
    evals = [e.job.progress.step for e in events if e.kind == pb.JobEvent.EVAL]
    assert evals[0] == step, evals
    assert evals[-1] == 6 * epoch_steps and events[-1].job.state == pb.SUCCEEDED


def test_a_stopping_coordinator_refuses_new_jobs(config) -> None:
    """Once a graceful stop begins, the health service turns NOT_SERVING and a new SubmitJob gets
    UNAVAILABLE (the client may retry elsewhere), while the running job is checkpointed and queued."""
    from service.server import start_server

    server = start_server(config)
    with CoordinatorClient(server.address) as client, grpc.insecure_channel(server.address) as channel:
        job = client.submit(small_spec("npz:blobs.npz", name="running", batchSize=10, epochs=100))
        while client.get(job.id).progress.step == 0:
            time.sleep(0.02)
        health = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=60)
        assert next(health).status == health_pb2.HealthCheckResponse.SERVING
        stopper = threading.Thread(target=server.stop, kwargs={"grace_s": 1.0})
        stopper.start()
        assert next(health).status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.RpcError) as refused:
            client.submit(small_spec("npz:blobs.npz", name="too late"), retry_delays=())
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value.details()
        stopper.join(timeout=60)
        assert not stopper.is_alive()
    on_disk = stored_jobs(config.state_dir)
    assert list(on_disk) == [job.id]  # the refused job was not created
    assert on_disk[job.id].state == pb.QUEUED and on_disk[job.id].progress.checkpoint_step > 0


def test_a_job_with_a_checkpoint_says_while_preparing_that_it_resumes_from_it() -> None:
    job = pb.Job(id="abc")
    assert preparing_note(job) == "preparing data and workers"
    job.progress.checkpoint_step = 120
    assert preparing_note(job) == "preparing data and workers to resume from the checkpoint at step 120"


def test_a_cancel_just_before_a_stop_ends_the_job_cancelled_not_resumed(config, monkeypatch) -> None:
    """CancelJob, then at once a graceful stop (before the job acted on the cancel): the job ends
    CANCELLED, on disk too, and a new coordinator leaves it so (it used to resume and succeed)."""
    # Each train call then runs to the epoch end (seconds), where the job next looks for a cancel:
    # the stop comes well before it does, however the threads are scheduled.
    monkeypatch.setattr("service.runner.REPORT_INTERVAL_S", 60.0)
    write_blobs(config.data_root / "long.npz", n_train=20 * N_TRAIN)
    spec = small_spec("npz:long.npz", name="cancelled", batchSize=10, epochs=100, checkpointEverySteps=0)
    with running_coordinator(config) as client:
        job = client.submit(spec)
        while client.get(job.id).state != pb.RUNNING or client.get(job.id).message.startswith("preparing"):
            time.sleep(0.02)
        client.cancel(job.id)  # the stop follows at once, as a SIGTERM right after `gradfleet cancel`
    on_disk = stored_jobs(config.state_dir)[job.id]
    assert (on_disk.state, on_disk.message) == (pb.CANCELLED, "cancelled by request")
    assert on_disk.progress.step < on_disk.progress.total_steps
    with running_coordinator(config) as client:
        assert client.get(job.id) == on_disk


def test_a_cancel_recorded_before_the_coordinator_died_is_honoured_at_the_next_start(config) -> None:
    """CancelJob records the request in the job store before it answers: a coordinator killed (SIGKILL,
    nothing else written) before the job ended leaves it RUNNING on disk with the cancel recorded,
    and the next start ends it CANCELLED instead of resuming it."""
    with running_coordinator(config) as client:
        job = client.submit(small_spec("npz:blobs.npz", name="killed", batchSize=10, epochs=100))
        while client.get(job.id).progress.step == 0:
            time.sleep(0.02)
        running = client.get(job.id)
        assert not cancel_on_disk(config.state_dir, job.id)
        client.cancel(job.id)
        assert cancel_on_disk(config.state_dir, job.id)  # before the job acted on it
    store = JobStore(config.state_dir)  # what a SIGKILL leaves: the record as last written while RUNNING
    store.update(job.id, lambda j: j.CopyFrom(running))
    store.close()
    with running_coordinator(config) as client:
        done = client.get(job.id)
        assert (done.state, done.message) == (pb.CANCELLED, "cancelled by request")
        assert done.progress == running.progress  # it never ran again


def cancel_on_disk(state_dir: Path, job_id: str) -> bool:
    """Whether the job store on disk holds a cancel request for the job, read as the next coordinator
    would read it."""
    store = JobStore(state_dir)
    try:
        return store.cancel_requested(job_id)
    finally:
        store.close()


def stop_after_a_checkpoint(config, spec: pb.JobSpec, step: int) -> pb.Job:
    """Run `spec` until it wrote a checkpoint at `step` or later, stop the coordinator, and return the
    job as it is on disk (QUEUED, to resume)."""
    with running_coordinator(config) as client:
        job = client.submit(spec)
        while client.get(job.id).progress.checkpoint_step < step:
            time.sleep(0.01)
    job = stored_jobs(config.state_dir)[job.id]
    assert job.state == pb.QUEUED and job.progress.checkpoint_step >= step
    return job


def test_a_job_whose_checkpoint_folder_is_gone_fails_instead_of_starting_over(config) -> None:
    """The record says a checkpoint was written but its folder was removed: the job fails naming the
    folder, as for damaged checkpoints, rather than training again from step 0 without a word."""
    spec = small_spec("npz:blobs.npz", name="lost", batchSize=10, epochs=20, checkpointEverySteps=20)
    job = stop_after_a_checkpoint(config, spec, 20)
    folder = CheckpointStore(config.state_dir, job.id).folder
    shutil.rmtree(folder)
    with running_coordinator(config) as client:
        done = wait_for(client, job.id, timeout_s=60)
    assert done.state == pb.FAILED
    assert done.message == (
        f"no checkpoint in {folder}, although the job wrote one at step {job.progress.checkpoint_step} "
        "(was the folder removed or moved?); the job will not restart from its initial weights silently: "
        "resubmit it to train from the start"
    )


def test_a_resumed_job_shows_the_counters_of_its_checkpoint_while_preparing(config) -> None:
    """A killed coordinator may have recorded steps after its last checkpoint; from the moment the job
    runs again it shows the step, samples and epoch of the checkpoint it resumes from."""
    spec = small_spec("npz:blobs.npz", name="resumed", batchSize=10, epochs=20, checkpointEverySteps=20)
    job = stop_after_a_checkpoint(config, spec, 20)
    ckpt, _ = CheckpointStore(config.state_dir, job.id).latest()
    store = JobStore(config.state_dir)  # steps a SIGKILL'd coordinator recorded but never checkpointed
    store.update(job.id, lambda j: setattr(j.progress, "step", ckpt.step + 6))
    store.close()
    with running_coordinator(config) as client:
        events = list(client.watch(job.id))
    running = [e.job for e in events if e.job.state == pb.RUNNING]
    preparing = [j for j in running if j.message.startswith("preparing data and workers")]
    assert preparing, [(e.kind, e.job.message) for e in events]
    for shown in preparing:
        assert shown.message.endswith(f"to resume from the checkpoint at step {ckpt.step}")
        p = shown.progress
        assert (p.step, p.samples_trained, p.epoch) == (ckpt.step, ckpt.samples_trained, ckpt.epoch)
    assert min(j.progress.step for j in running) == ckpt.step
    assert events[-1].job.state == pb.SUCCEEDED
