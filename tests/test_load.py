"""A short run of bench/load.py against a real coordinator, with bounds on counts, not on speed."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest

from bench.load import drained_in_order, read_load, started_in_order, submit_burst, wait_training
from gradfleet.v1 import coordinator_pb2 as pb
from service.client import CoordinatorClient
from tests.conftest import start_coordinator
from tests.helpers import small_spec, write_blobs

pytestmark = [pytest.mark.integration, pytest.mark.ray, pytest.mark.slow]

CLIENTS = 10
LOAD_SECONDS = 4.0
BURST = 200
MAX_QUEUED = 5


@pytest.fixture
def server(ray_session, tmp_path) -> Iterator:
    running = start_coordinator(tmp_path, max_queued_jobs=MAX_QUEUED, max_running_jobs=1)
    write_blobs(running.config.data_root / "blobs.npz", n_train=2000)
    yield running
    running.stop(grace_s=1.0)


def test_readers_see_no_errors_while_a_job_trains(server):
    """Clients polling GetJob/ListJobs and watching during training see no error, and every
    stream ends cleanly with the job's terminal event."""
    with CoordinatorClient(server.address) as client:
        job = client.submit(small_spec("npz:blobs.npz", epochs=10_000, numWorkers=1, batchSize=100))
        wait_training(client, job.id)
        report, _ = read_load(
            server.address, job.id, CLIENTS, lambda: time.sleep(LOAD_SECONDS), lambda: client.cancel(job.id)
        )
        assert client.get(job.id).progress.step > 5  # it kept training
    assert report.errors == []
    assert report.streams_opened == report.streams_clean == CLIENTS
    assert report.watch_events >= CLIENTS  # at least the first STATE event each
    assert all(len(calls) >= CLIENTS for calls in report.latencies.values())
    assert report.percentile(0.99) < 5.0  # seconds; generous on 2 shared cores


def test_a_burst_of_submissions_is_accepted_or_refused_and_drains_in_order(server):
    """200 jobs at once: each accepted or RESOURCE_EXHAUSTED naming the limit, none lost, and the
    accepted ones start in the order they were created."""
    burst = submit_burst(server.address, small_spec("npz:blobs.npz", epochs=1, numWorkers=1), BURST)
    assert burst.other_errors == []
    assert len(burst.accepted) + len(burst.refused) == BURST
    assert MAX_QUEUED <= len(burst.accepted) <= MAX_QUEUED + 2  # + the one running, + one being dispatched
    assert all(f"the limit is {MAX_QUEUED} (--max-queued-jobs)" in r for r in burst.refused)
    with CoordinatorClient(server.address) as client:
        assert {j.id for j in client.list()} == set(burst.accepted)  # none lost, none extra
        jobs = drained_in_order(client, burst.accepted, timeout_s=240)
    assert [j.state for j in jobs] == [pb.SUCCEEDED] * len(jobs)
    assert started_in_order(jobs)
    assert grpc.StatusCode.RESOURCE_EXHAUSTED.name in burst.refused[0]
