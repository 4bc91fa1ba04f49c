"""A real `gradfleet serve` process stopped with SIGTERM and killed with SIGKILL mid-job."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from gradfleet.v1 import coordinator_pb2 as pb
from service.checkpoints import CheckpointStore
from service.jobs import JobStore
from tests.helpers import ServeProcess, small_spec, wait_for, write_blobs
from tests.helpers import model_weights as weights

pytestmark = [pytest.mark.integration, pytest.mark.slow]
N_TRAIN = 20000  # 400 steps per epoch at batch 50: long enough to stop in the middle
STEPS_PER_EPOCH = 400


@contextmanager
def coordinator(tmp_path: Path) -> Iterator[ServeProcess]:
    server = ServeProcess(tmp_path / "state", tmp_path / "data", tmp_path / "server.log")
    try:
        yield server
    finally:
        if server.proc.poll() is None:
            server.stop(signal.SIGKILL, 30)


def wait_for_step(client, job_id: str, step: int, timeout_s: float = 180.0) -> pb.Job:
    deadline = time.monotonic() + timeout_s
    while (job := client.get(job_id)).progress.step < step:
        assert job.state in (pb.QUEUED, pb.RUNNING), job.message
        assert time.monotonic() < deadline, f"job never reached step {step}: {job}"
        time.sleep(0.02)
    return job


def test_sigterm_and_sigkill_of_the_coordinator_lose_nothing(tmp_path: Path) -> None:
    """A job with Adam and a step schedule, stopped by SIGTERM after 2 of 4 epochs and then SIGKILLed
    mid-epoch, resumes by itself each time and ends with the weights of 4 straight epochs, its
    step and sample counters exact."""
    (tmp_path / "data").mkdir()
    write_blobs(tmp_path / "data" / "blobs.npz", n_train=N_TRAIN)
    spec = small_spec(
        "npz:blobs.npz",
        epochs=4,
        optimizer={"kind": "ADAM", "learningRate": 0.01, "schedule": {"kind": "STEP", "gamma": 0.5}},
        checkpointEverySteps=100,
    )
    with coordinator(tmp_path) as first:
        job = first.client.submit(spec)
        at_stop = wait_for_step(first.client, job.id, 2 * STEPS_PER_EPOCH + 10)
        took = first.stop(signal.SIGTERM, timeout_s=60)
    assert took < 30
    store = JobStore(tmp_path / "state")
    stopped = store.get(job.id)
    store.close()
    assert stopped.state == pb.QUEUED and "shutdown" in stopped.message
    saved, _ = CheckpointStore(tmp_path / "state", job.id).latest()
    assert saved.step >= at_stop.progress.step  # the shutdown checkpoint holds the latest step

    with coordinator(tmp_path) as second:
        resumed = wait_for_step(second.client, job.id, saved.step + 1)
        assert f"resumed from the checkpoint at step {saved.step}" in resumed.message
        checkpointed = second.client.get(job.id).progress.checkpoint_step
        wait_for_step(second.client, job.id, max(checkpointed, saved.step) + 150)
        second.stop(signal.SIGKILL, timeout_s=30)

    with coordinator(tmp_path) as third:
        done = wait_for(third.client, job.id, timeout_s=300)
        assert done.state == pb.SUCCEEDED, done.message
        assert done.progress.step == done.progress.total_steps == 4 * STEPS_PER_EPOCH
        assert done.progress.samples_trained == 4 * N_TRAIN
        reference = pb.JobSpec()
        reference.CopyFrom(spec)
        reference.name = "straight"
        straight = wait_for(third.client, third.client.submit(reference).id, timeout_s=300)
        assert straight.state == pb.SUCCEEDED, straight.message
        got = weights(third.client, job.id, tmp_path / "resumed.npz")
        want = weights(third.client, straight.id, tmp_path / "straight.npz")
        assert got.keys() == want.keys() and len(got) == 6
        for name in got:
            assert got[name].tobytes() == want[name].tobytes(), name
        third.stop(signal.SIGTERM, timeout_s=60)


def test_a_cancel_survives_a_sigkill_that_follows_it_at_once(tmp_path: Path) -> None:
    """`gradfleet cancel`, then at once a SIGKILL of the coordinator (the job had no time to act on the
    cancel): the next coordinator on the state folder ends the job CANCELLED, never resumes it."""
    (tmp_path / "data").mkdir()
    write_blobs(tmp_path / "data" / "blobs.npz", n_train=N_TRAIN)
    with coordinator(tmp_path) as first:
        job = first.client.submit(small_spec("npz:blobs.npz", epochs=50))
        wait_for_step(first.client, job.id, 1)
        first.client.cancel(job.id)
        first.stop(signal.SIGKILL, timeout_s=30)

    with coordinator(tmp_path) as second:
        done = second.client.get(job.id)
        assert (done.state, done.message) == (pb.CANCELLED, "cancelled by request")
        assert done.progress.step < done.progress.total_steps
        second.stop(signal.SIGTERM, timeout_s=60)
