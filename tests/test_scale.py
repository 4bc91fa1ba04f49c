"""ScaleJob: a running job changes its worker count at a step boundary and ends with the same weights."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import ray

from gradfleet.v1 import coordinator_pb2 as pb
from tests.helpers import small_spec, wait_for, write_blobs

pytestmark = [pytest.mark.integration, pytest.mark.ray]


def weights(client, job_id: str, path: Path) -> dict[str, np.ndarray]:
    client.download(job_id, path)
    with np.load(path, allow_pickle=False) as model:
        return {name: model[name] for name in model.files if name.startswith("layer_")}


@ray.remote(num_cpus=0)
class CpuHog:
    """Holds CPUs (given by .options(num_cpus=N)) of the session's 4 while alive."""

    def ping(self) -> bool:
        return True


def hog(cpus: int):
    actor = CpuHog.options(num_cpus=cpus).remote()
    ray.get(actor.ping.remote(), timeout=60)
    return actor


def wait_until(client, job_id: str, done, timeout_s: float = 120) -> pb.Job:
    deadline = time.monotonic() + timeout_s
    while not done(job := client.get(job_id)):
        # QUEUED too: while new workers wait for CPUs the job shows QUEUED with the reason
        assert job.state in (pb.QUEUED, pb.RUNNING) and time.monotonic() < deadline, job
        time.sleep(0.02)
    return job


def test_scaling_1_to_3_to_2_workers_keeps_the_weights_bit_identical(client, coordinator, tmp_path) -> None:
    """A job scaled 1 -> 3 -> 2 workers mid-run ends with the weights of a fixed 2-worker run."""
    write_blobs(coordinator.config.data_root / "blobs.npz", n_train=3000)
    # 6,000 steps: scaling up trains on with the old workers until the new ones start, so a shorter
    # job can end before the switch on a loaded machine.
    spec = {"numWorkers": 1, "microShards": 6, "batchSize": 30, "epochs": 60}
    scaled = client.submit(small_spec("npz:blobs.npz", **spec))
    wait_until(client, scaled.id, lambda job: job.progress.step >= 20)
    assert client.scale(scaled.id, 3).spec.num_workers in (1, 3)  # applied at the next boundary
    switched = wait_until(client, scaled.id, lambda job: job.spec.num_workers == 3)
    assert switched.message.startswith("scaled from 1 to 3 workers at step ")
    wait_until(client, scaled.id, lambda job: job.progress.step > switched.progress.step)
    client.scale(scaled.id, 2)
    done = wait_for(client, scaled.id)
    assert done.state == pb.SUCCEEDED, done.message
    assert done.spec.num_workers == 2 and done.progress.step == done.progress.total_steps

    fixed = wait_for(client, client.submit(small_spec("npz:blobs.npz", **{**spec, "numWorkers": 2})).id)
    assert fixed.state == pb.SUCCEEDED, fixed.message
    got, want = (
        weights(client, scaled.id, tmp_path / "scaled.npz"),
        weights(client, fixed.id, tmp_path / "fixed.npz"),
    )
    assert got.keys() == want.keys() and len(got) == 4
    for name in want:
        assert np.array_equal(got[name], want[name]), name


def test_scale_refuses_bad_counts_and_ended_jobs(client, coordinator) -> None:
    """Zero or too many workers are INVALID_ARGUMENT naming num_workers; an ended job is FAILED_PRECONDITION;
    a queued job simply starts with the new count."""
    write_blobs(coordinator.config.data_root / "blobs.npz")
    done = wait_for(client, client.submit(small_spec("npz:blobs.npz")).id)
    for count in (0, coordinator.config.max_workers_per_job + 1):
        with pytest.raises(grpc.RpcError) as bad:
            client.scale(done.id, count)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "num_workers" in bad.value.details()
    with pytest.raises(grpc.RpcError) as ended:
        client.scale(done.id, 2)
    assert ended.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    long = client.submit(small_spec("npz:blobs.npz", epochs=500, batchSize=10))
    queued = client.submit(small_spec("npz:blobs.npz", name="queued"))
    assert client.scale(queued.id, 1).spec.num_workers == 1
    client.cancel(long.id)
    finished = wait_for(client, queued.id)
    assert finished.state == pb.SUCCEEDED and finished.spec.num_workers == 1


def test_scaling_up_trains_on_until_the_cpus_are_held(client, coordinator) -> None:
    """Scaling past the cluster's CPUs is FAILED_PRECONDITION; scaling up with too few free CPUs keeps
    the job RUNNING on its old workers with the reason, then switches, checkpointing the live state."""
    write_blobs(coordinator.config.data_root / "blobs.npz", n_train=50000)  # 5000 steps an epoch
    spec = small_spec("npz:blobs.npz", numWorkers=1, batchSize=10, epochs=50, checkpointEverySteps=10**6)
    job = client.submit(spec)
    wait_until(client, job.id, lambda j: j.progress.step > 0)
    with pytest.raises(grpc.RpcError) as too_many:
        client.scale(job.id, 5)
    assert too_many.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "num_workers: 5" in too_many.value.details() and "4 in total" in too_many.value.details()
    held = hog(2)  # 1 CPU left free: 3 workers need 2 more
    try:
        client.scale(job.id, 3)
        waiting = wait_until(client, job.id, lambda j: j.message.startswith("waiting"), timeout_s=30)
        assert waiting.message == "waiting for 2 more CPUs to scale to 3 workers; cluster has 1 free"
        later = wait_until(client, job.id, lambda j: j.progress.step > waiting.progress.step)
        assert later.state == pb.RUNNING and later.spec.num_workers == 1
    finally:
        ray.kill(held)
    scaled = wait_until(client, job.id, lambda j: j.spec.num_workers == 3, timeout_s=30)
    at = int(scaled.message.rsplit(" ", 1)[1])
    wait_until(client, job.id, lambda j: j.progress.checkpoint_step == at, timeout_s=10)
    client.cancel(job.id)


def test_a_job_waiting_for_cpus_waits_for_its_new_count(client, coordinator) -> None:
    """A 2-worker job queued for CPUs (1 free) and scaled to 1 worker starts at once and succeeds."""
    write_blobs(coordinator.config.data_root / "blobs.npz")
    held = hog(3)
    try:
        job = client.submit(small_spec("npz:blobs.npz", numWorkers=2))
        wait_until(client, job.id, lambda j: j.message.startswith("waiting for 2 CPUs"), timeout_s=30)
        client.scale(job.id, 1)
        done = wait_for(client, job.id, timeout_s=30)
        assert done.state == pb.SUCCEEDED, done.message
        assert done.spec.num_workers == 1
    finally:
        ray.kill(held)


def test_scaling_up_waits_for_the_jobs_waiting_to_start(ray_session, tmp_path) -> None:
    """A running job asks for the extra CPUs of a scale-up only once no job waits for CPUs to start:
    with 2 CPUs free and a 3-worker job waiting for them, scaling a 1-worker job to 2 waits (saying
    so) instead of taking one; once the waiting job is cancelled, it scales."""
    from service.client import CoordinatorClient
    from tests.conftest import start_coordinator

    coordinator = start_coordinator(tmp_path, max_running_jobs=2)
    write_blobs(coordinator.config.data_root / "blobs.npz", n_train=50000)
    held = None
    try:
        with CoordinatorClient(coordinator.address) as client:
            spec = small_spec(
                "npz:blobs.npz", numWorkers=1, batchSize=10, epochs=50, checkpointEverySteps=10**6
            )
            running = client.submit(spec)
            wait_until(client, running.id, lambda j: j.progress.step > 0)
            held = hog(1)  # 2 CPUs left free
            waiting = client.submit(small_spec("npz:blobs.npz", numWorkers=3))
            wait_until(client, waiting.id, lambda j: j.message.startswith("waiting for 3 CPUs"), timeout_s=30)
            client.scale(running.id, 2)
            note = "waiting for 1 more CPU to scale to 2 workers; 1 job waiting for CPUs goes first"
            wait_until(client, running.id, lambda j: j.message == note, timeout_s=30)
            assert client.get(waiting.id).message == "waiting for 3 CPUs for the workers; cluster has 2 free"
            client.cancel(waiting.id)
            scaled = wait_until(client, running.id, lambda j: j.spec.num_workers == 2, timeout_s=30)
            assert scaled.state == pb.RUNNING
            client.cancel(running.id)
    finally:
        if held is not None:
            ray.kill(held)
        coordinator.stop(grace_s=1.0)
