"""Gang scheduling of a job's workers on a real local Ray with 4 CPUs: wait with a reason, or fail fast."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
import ray
from ray.util import placement_group_table

from gradfleet.v1 import coordinator_pb2 as pb
from tests.conftest import start_coordinator
from tests.helpers import small_spec, wait_for, write_blobs
from workers.cpu_queue import CpuQueue
from workers.placement import Unplaceable, release, reserve_workers, total_if_too_small

pytestmark = [pytest.mark.integration, pytest.mark.ray]


@ray.remote(num_cpus=3)
class CpuHog:
    """Holds 3 of the session's 4 CPUs while alive."""

    def ping(self) -> bool:
        return True


def poll(condition, timeout_s: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what or condition
        time.sleep(0.05)


def pending_group_sizes() -> list[int]:
    """The bundle count of each placement group Ray has been asked for and not yet placed."""
    return [len(g["bundles"]) for g in placement_group_table().values() if g["state"] == "PENDING"]


class Reserving:
    """reserve_workers on its own thread, as a job's runner calls it; `reasons` are its on_wait calls."""

    def __init__(self, num_workers: int, queue: CpuQueue, ticket: int) -> None:
        self.reasons: list[str] = []
        self.group = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(num_workers, queue, ticket), daemon=True)
        self._thread.start()

    def _run(self, num_workers: int, queue: CpuQueue, ticket: int) -> None:
        try:
            self.group = reserve_workers(
                num_workers, wait_s=60, on_wait=self.reasons.append, queue=queue, ticket=ticket
            )
        except BaseException as exc:
            self.error = exc

    def last_reason(self) -> str:
        return self.reasons[-1] if self.reasons else ""

    def done(self, timeout_s: float = 30.0):
        self._thread.join(timeout_s)
        assert self.error is None and self.group is not None, self.error
        return self.group


def live_placement_groups(timeout_s: float = 15.0) -> list[dict]:
    """Placement groups not yet removed, after giving a finishing job `timeout_s` to release its own."""
    deadline = time.monotonic() + timeout_s
    while True:
        live = [g for g in placement_group_table().values() if g["state"] != "REMOVED"]
        if not live or time.monotonic() > deadline:
            return live
        time.sleep(0.1)


def test_reservation_fails_at_once_when_the_cluster_is_too_small(ray_session) -> None:
    """Five workers on a 4-CPU cluster: Unplaceable naming both numbers, before any waiting."""
    start = time.monotonic()
    with pytest.raises(Unplaceable, match=r"needs 5 CPUs .* has 4 in total"):
        reserve_workers(5, wait_s=60)
    assert time.monotonic() - start < 5
    assert live_placement_groups() == []


def test_reservation_times_out_and_releases_its_placement_group(ray_session) -> None:
    """With 1 CPU free, reserving 2 waits, reports the reason, then gives up and removes the group."""
    hog = CpuHog.remote()
    try:
        ray.get(hog.ping.remote(), timeout=60)
        reasons = []
        with pytest.raises(Unplaceable, match="no room for the workers after 2 s"):
            reserve_workers(2, wait_s=2, on_wait=reasons.append)
        assert reasons and reasons[0] == "waiting for 2 CPUs for the workers; cluster has 1 free"
        assert live_placement_groups() == []
    finally:
        ray.kill(hog)


def test_a_job_too_big_for_the_cluster_is_refused_at_submit(client, coordinator) -> None:
    """A 5-worker job on 4 CPUs is refused up front with FAILED_PRECONDITION naming both numbers, as
    ScaleJob is, and no job is created; 4 workers fit."""
    write_blobs(coordinator.config.data_root / "blobs.npz")
    with pytest.raises(grpc.RpcError) as refused:
        client.submit(small_spec("npz:blobs.npz", numWorkers=5))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.value.details() == (
        "num_workers: the job needs 5 CPUs (one per worker) but the cluster has 4 in total; "
        "lower num_workers or add nodes"
    )
    assert client.list() == []
    fits = client.submit(small_spec("npz:blobs.npz", numWorkers=4))
    assert fits.state in (pb.QUEUED, pb.RUNNING)
    client.cancel(fits.id)


def test_the_total_cpu_check_is_bounded_and_lets_an_unknown_total_through(monkeypatch) -> None:
    """A GCS that does not answer costs the check `timeout_s`, and calls meanwhile share the one
    query; a total that is unknown (no answer, an error, no node reported) lets the job through."""
    release, calls = threading.Event(), []

    def hung() -> dict:
        calls.append(1)
        release.wait(30)
        return {"CPU": 4.0}

    monkeypatch.setattr(ray, "cluster_resources", hung)
    start = time.monotonic()
    try:
        assert total_if_too_small(5, timeout_s=0.2) is None
        assert total_if_too_small(5, timeout_s=0.2) is None
        assert time.monotonic() - start < 2 and calls == [1]
    finally:
        release.set()
    assert total_if_too_small(5, timeout_s=10) == 4.0  # the answer, once there is one

    def fails() -> dict:
        raise ConnectionError("GCS unreachable")

    monkeypatch.setattr(ray, "cluster_resources", fails)
    assert total_if_too_small(5) is None
    monkeypatch.setattr(ray, "cluster_resources", dict)
    assert total_if_too_small(5) is None


def test_a_job_waits_queued_with_a_reason_and_starts_when_cpus_free(client, coordinator) -> None:
    """While 3 of 4 CPUs are taken a 2-worker job is QUEUED saying why; freeing them lets it succeed."""
    write_blobs(coordinator.config.data_root / "blobs.npz")
    hog = CpuHog.remote()
    try:
        ray.get(hog.ping.remote(), timeout=60)
        job = client.submit(small_spec("npz:blobs.npz", numWorkers=2))
        deadline = time.monotonic() + 60
        while "waiting for" not in (current := client.get(job.id)).message:
            assert time.monotonic() < deadline, current
            time.sleep(0.1)
        assert current.state == pb.QUEUED
        assert current.message == "waiting for 2 CPUs for the workers; cluster has 1 free"
    finally:
        ray.kill(hog)
    done = wait_for(client, job.id, timeout_s=120)
    assert done.state == pb.SUCCEEDED, done.message
    assert live_placement_groups() == []


def test_reservations_get_cpus_oldest_first(ray_session) -> None:
    """An older job starting to wait takes back a younger one's pending request, so Ray is only ever
    asked for the oldest waiting job's CPUs: when 4 CPUs free up, the older 3-worker job gets them, and
    the younger 2-worker one (which alone would fit first) only once the older one has its CPUs.
    (Ray itself often places a group asked for later before one that waited.)"""
    queue = CpuQueue()
    older, younger = queue.ticket(), queue.ticket()
    hog = CpuHog.remote()
    ray.get(hog.ping.remote(), timeout=60)
    groups = []
    try:
        second = Reserving(2, queue, younger)  # alone in line: asks Ray at once
        poll(lambda: pending_group_sizes() == [2], what=pending_group_sizes)
        first = Reserving(3, queue, older)
        poll(lambda: "older job" in second.last_reason(), what=second.reasons)
        assert second.last_reason() == "waiting for 2 CPUs for the workers; 1 older job waits for CPUs first"
        poll(lambda: pending_group_sizes() == [3], what=pending_group_sizes)  # the younger request withdrawn
        poll(lambda: first.reasons, what="the older reservation never said why it waits")
        assert first.last_reason() == "waiting for 3 CPUs for the workers; cluster has 1 free"
        ray.kill(hog)
        groups.append(first.done())
        poll(lambda: second.last_reason().endswith("cluster has 1 free"), what=second.reasons)
        assert second.group is None and pending_group_sizes() == [2]
        release(groups.pop())
        groups.append(second.done())
    finally:
        ray.kill(hog)
        for group in groups:
            release(group)
    assert live_placement_groups() == []


def test_a_coordinators_jobs_get_cpus_in_submission_order(ray_session, tmp_path) -> None:
    """With two jobs running at once and room for one, the later job waits behind the earlier one
    (QUEUED, saying so) without asking Ray for CPUs; both succeed once the CPUs are free."""
    from service.client import CoordinatorClient

    coordinator = start_coordinator(tmp_path, max_running_jobs=2)
    write_blobs(coordinator.config.data_root / "blobs.npz")
    hog = CpuHog.remote()
    try:
        ray.get(hog.ping.remote(), timeout=60)
        with CoordinatorClient(coordinator.address) as client:
            first = client.submit(small_spec("npz:blobs.npz", numWorkers=2, name="first"))
            second = client.submit(small_spec("npz:blobs.npz", numWorkers=2, name="second"))
            poll(lambda: "older job" in client.get(second.id).message, what=lambda: client.get(second.id))
            waiting = client.get(second.id)
            assert waiting.state == pb.QUEUED
            assert waiting.message == "waiting for 2 CPUs for the workers; 1 older job waits for CPUs first"
            assert client.get(first.id).message == "waiting for 2 CPUs for the workers; cluster has 1 free"
            assert pending_group_sizes() == [2]
            ray.kill(hog)
            for job in (first, second):
                done = wait_for(client, job.id, timeout_s=120)
                assert done.state == pb.SUCCEEDED, done.message
    finally:
        ray.kill(hog)
        coordinator.stop(grace_s=1.0)
    assert live_placement_groups() == []
