"""WatchJob: the event stream, freeing server threads when clients go away, and `gradfleet watch`'s exit
codes through the real CLI against a real coordinator."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from gradfleet.v1 import coordinator_pb2 as pb
from gradfleet.v1 import coordinator_pb2_grpc as pb_grpc
from service.client import CoordinatorClient
from tests.helpers import gradfleet_command, small_spec, wait_for, write_blobs, write_broken

pytestmark = [pytest.mark.integration, pytest.mark.ray]
ROOT = Path(__file__).resolve().parent.parent
RPC_THREADS = 4
WATCH_STREAMS = RPC_THREADS - 1  # the most the server allows: one thread stays free


def long_spec() -> pb.JobSpec:
    return small_spec("npz:long.npz", name="long", epochs=1000, batchSize=10)


def wait_until_training(client, job_id: str) -> None:
    wait_for(client, job_id, states={pb.RUNNING}, timeout_s=60)
    deadline = time.monotonic() + 60
    while client.get(job_id).progress.step == 0:
        assert time.monotonic() < deadline, "the job never took a step"
        time.sleep(0.05)


def start_watch(address: str, job_id: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        gradfleet_command("watch", job_id, "--server", address),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_watch_streams_state_then_progress_and_ends_after_the_terminal_state(client, coordinator) -> None:
    """The first event is the current state; PROGRESS and EVAL events follow with steps that never go
    back; the last is the SUCCEEDED state change, after which the stream ends."""
    write_blobs(coordinator.config.data_root / "blobs.npz")
    job = client.submit(small_spec("npz:blobs.npz", epochs=3, evalEverySteps=5))
    events = list(client.watch(job.id))  # returns only because the stream ends

    first, last = events[0], events[-1]
    assert first.kind == pb.JobEvent.STATE
    assert first.job.state in (pb.QUEUED, pb.RUNNING)
    assert (last.kind, last.job.state) == (pb.JobEvent.STATE, pb.SUCCEEDED)
    kinds = [e.kind for e in events]
    assert pb.JobEvent.PROGRESS in kinds
    assert pb.JobEvent.EVAL in kinds
    assert [e.job.state for e in events if e.kind == pb.JobEvent.STATE][-2:] == [pb.RUNNING, pb.SUCCEEDED]
    steps = [e.job.progress.step for e in events]
    assert steps == sorted(steps)
    assert steps[-1] == last.job.progress.total_steps == 3 * 12
    evals = [e.job.progress for e in events if e.kind == pb.JobEvent.EVAL]
    assert all(p.has_eval and 0 <= p.eval_accuracy <= 1 for p in evals)
    assert all(e.job.id == job.id and e.HasField("time") for e in events)
    assert last.job == client.get(job.id)


def test_watching_a_finished_job_gives_one_event(client, coordinator) -> None:
    """A watch of a job that already ended yields its state once and ends."""
    write_broken(coordinator.config.data_root / "broken.npz")
    job = wait_for(client, client.submit(small_spec("npz:broken.npz")).id, timeout_s=60)
    events = list(client.watch(job.id))
    assert [(e.kind, e.job.state) for e in events] == [(pb.JobEvent.STATE, pb.FAILED)]


@pytest.fixture
def few_threads(ray_session, tmp_path) -> Iterator:
    """A coordinator whose gRPC server has only RPC_THREADS threads, WATCH_STREAMS of them for streams."""
    from service.config import ServerConfig
    from service.server import start_server

    data_root = tmp_path / "data"
    data_root.mkdir()
    config = ServerConfig(
        port=0,
        metrics_port=-1,
        rpc_threads=RPC_THREADS,
        max_watch_streams=WATCH_STREAMS,
        state_dir=tmp_path / "state",
        data_root=data_root,
    )
    running = start_server(config)
    yield running
    running.stop(grace_s=1.0)


def _watch(channel: grpc.Channel, job_id: str):
    return pb_grpc.CoordinatorStub(channel).WatchJob(pb.WatchJobRequest(job_id=job_id))


def test_watch_streams_leave_a_thread_and_dropped_clients_free_theirs(few_threads) -> None:
    """With every allowed watch stream open (each holding a server thread) a GetJob still answers and one
    more stream is refused; once those clients cancel or close, their streams are free again within
    seconds, though the watched job sends no event meanwhile."""
    write_blobs(few_threads.config.data_root / "long.npz", n_train=5000)
    client = CoordinatorClient(few_threads.address, timeout=5)
    running = client.submit(long_spec())
    wait_until_training(client, running.id)
    # Queued behind the running job (one job at a time), so its watchers get nothing to send: only
    # noticing the client is gone can end their streams.
    queued = client.submit(small_spec("npz:long.npz", name="queued"))

    channels = [grpc.insecure_channel(few_threads.address) for _ in range(WATCH_STREAMS + 1)]
    streams = [_watch(channel, queued.id) for channel in channels[:WATCH_STREAMS]]
    for stream in streams:
        assert next(stream).job.state == pb.QUEUED  # this stream holds a server thread now
    with CoordinatorClient(few_threads.address, timeout=1.5) as probe:
        assert probe.get(running.id).state == pb.RUNNING  # the thread streams may not take
    with pytest.raises(grpc.RpcError) as refused:
        next(_watch(channels[-1], queued.id))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--max-watch-streams" in refused.value.details()

    for stream in streams[0::2]:
        stream.cancel()  # half the clients cancel their call...
    for channel in channels[1:WATCH_STREAMS:2]:
        channel.close()  # ...and half just go away
    fresh = grpc.insecure_channel(few_threads.address)
    opened = []
    deadline = time.monotonic() + 5
    while len(opened) < WATCH_STREAMS:
        stream = _watch(fresh, queued.id)
        try:
            next(stream)
            opened.append(stream)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
            assert time.monotonic() < deadline, f"only {len(opened)} of {WATCH_STREAMS} streams freed"
            time.sleep(0.1)
    for stream in opened:
        stream.cancel()
    for channel in (fresh, *channels):
        channel.close()
    for job in (queued, running):
        client.cancel(job.id)
    assert wait_for(client, running.id, timeout_s=30).state == pb.CANCELLED


def test_cli_watch_exit_codes(client, coordinator) -> None:
    """`gradfleet watch` exits 0 for a job that succeeds, 1 for one that fails, 3 for one cancelled
    while it is being watched, and ends with a one-line summary."""
    write_blobs(coordinator.config.data_root / "blobs.npz")
    write_blobs(coordinator.config.data_root / "long.npz", n_train=5000)
    succeeds = client.submit(small_spec("npz:blobs.npz"))
    ok = start_watch(coordinator.address, succeeds.id)
    out, err = ok.communicate(timeout=240)
    assert ok.returncode == 0, err
    assert out.strip().splitlines()[-1].startswith(f"job {succeeds.id} SUCCEEDED in ")

    write_broken(coordinator.config.data_root / "broken.npz")
    fails = client.submit(small_spec("npz:broken.npz"))
    failed = start_watch(coordinator.address, fails.id)
    out, err = failed.communicate(timeout=120)
    assert failed.returncode == 1, err
    assert f"job {fails.id} FAILED" in out
    assert "broken.npz" in out.strip().splitlines()[-1]

    long = client.submit(long_spec())
    wait_until_training(client, long.id)
    watching = start_watch(coordinator.address, long.id)
    assert watching.stdout.readline().startswith(f"job {long.id} RUNNING")  # connected and following
    client.cancel(long.id)
    out, err = watching.communicate(timeout=60)
    assert watching.returncode == 3, err
    assert f"job {long.id} CANCELLED" in out.strip().splitlines()[-1]


def test_cli_watch_survives_a_coordinator_restart(ray_session, tmp_path) -> None:
    """`gradfleet watch` keeps following a job while its coordinator is down for a few seconds and
    restarted on the same port, and exits 3 when the job is then cancelled."""
    from tests.conftest import start_coordinator

    first = start_coordinator(tmp_path, metrics_port=-1)
    write_blobs(first.config.data_root / "long.npz", n_train=5000)
    client = CoordinatorClient(first.address, timeout=5)
    job = client.submit(long_spec())
    wait_until_training(client, job.id)
    watching = start_watch(first.address, job.id)
    assert watching.stdout.readline().startswith(f"job {job.id} RUNNING")
    first.stop(grace_s=1.0)
    time.sleep(3.0)  # down long enough for a few failed attempts
    second = start_coordinator(tmp_path, port=first.port, metrics_port=-1)
    try:
        client.reconnect()
        wait_until_training(client, job.id)
        client.cancel(job.id)
        out, err = watching.communicate(timeout=60)
    finally:
        second.stop(grace_s=1.0)
        client.close()
    assert watching.returncode == 3, err
    assert "connection lost (" in out
    assert out.strip().splitlines()[-1].startswith(f"job {job.id} CANCELLED")


def test_a_watch_batch_leaves_out_only_progress_that_a_later_event_supersedes() -> None:
    from service.servicer import without_superseded_progress

    kinds = [pb.JobEvent.PROGRESS, pb.JobEvent.EVAL, pb.JobEvent.PROGRESS, pb.JobEvent.PROGRESS]
    kinds += [pb.JobEvent.CHECKPOINT, pb.JobEvent.PROGRESS]
    events = [(v, pb.JobEvent(kind=k, job=pb.Job(id=str(v)))) for v, k in enumerate(kinds, start=1)]
    kept = without_superseded_progress(events)
    assert [(e.kind, e.job.id) for e in kept] == [
        (pb.JobEvent.EVAL, "2"),
        (pb.JobEvent.CHECKPOINT, "5"),
        (pb.JobEvent.PROGRESS, "6"),
    ]
    assert without_superseded_progress(events[:1]) == [events[0][1]]


def test_a_milestone_wait_ends_at_the_jobs_next_non_progress_event_only(tmp_path) -> None:
    """JobStore.wait_for_milestone, which paces a watch stream between batches, sleeps through the
    job's PROGRESS events and through other jobs' events, and ends at once on the job's EVAL event
    or a wake_all."""
    import threading

    from service.jobs import JobStore
    from service.spec_defaults import with_defaults

    store = JobStore(tmp_path)
    job, _ = store.create(with_defaults(small_spec("npz:blobs.npz")))
    other, _ = store.create(with_defaults(small_spec("npz:blobs.npz", name="other")))
    version, _ = store.snapshot(job.id)

    def later(action, delay_s: float = 0.2) -> None:
        threading.Timer(delay_s, action).start()

    def waited(timeout_s: float) -> float:
        start = time.monotonic()
        store.wait_for_milestone(job.id, version, timeout_s)
        return time.monotonic() - start

    later(lambda: store.update(job.id, lambda j: setattr(j.progress, "step", 1)))
    later(lambda: store.update(other.id, lambda j: None, kind=pb.JobEvent.EVAL), 0.4)
    assert waited(1.5) >= 1.4  # neither its PROGRESS nor another job's EVAL ended the wait
    later(
        lambda: store.update(job.id, lambda j: setattr(j.progress, "has_eval", True), kind=pb.JobEvent.EVAL)
    )
    assert waited(30) < 10
    version, _ = store.snapshot(job.id)  # past the EVAL: waits again
    later(store.wake_all)
    assert waited(30) < 10


def test_watch_sends_eval_and_checkpoint_events_as_they_happen(client, coordinator) -> None:
    """PROGRESS is paced to once a second, but EVAL and CHECKPOINT events are not held back for it:
    each reaches the client well within the pacing interval of its own timestamp."""
    from service.servicer import WATCH_BATCH_S

    write_blobs(coordinator.config.data_root / "long.npz", n_train=5000)
    job = client.submit(
        small_spec("npz:long.npz", name="evals", epochs=1000, batchSize=10, evalEverySteps=50)
    )
    delays = []
    for event in client.watch(job.id):
        if event.kind in (pb.JobEvent.EVAL, pb.JobEvent.CHECKPOINT) and len(delays) < 6:
            delays.append(time.time() - event.time.ToNanoseconds() / 1e9)
            if len(delays) == 6:
                client.cancel(job.id)
    delays.sort()
    assert len(delays) >= 6, delays
    assert delays[len(delays) // 2] < WATCH_BATCH_S / 4, delays  # held for a batch: about half of it
