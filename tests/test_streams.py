"""One budget for long-lived streams of every kind (WatchJob, Health/Watch, DownloadModel), so they
always leave threads for unary calls, and downloads that read the model file a chunk at a time."""

from __future__ import annotations

import gc
import os
import time
import tracemalloc
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gradfleet.v1 import coordinator_pb2 as pb
from gradfleet.v1 import coordinator_pb2_grpc as pb_grpc
from service.client import CoordinatorClient
from service.durable import write_durably
from service.runner import JobRunner
from tests.conftest import start_coordinator
from tests.helpers import small_spec, wait_for, write_blobs

pytestmark = [pytest.mark.integration, pytest.mark.ray]
RPC_THREADS = 6
STREAMS = 4
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]  # each channel opens its own connection
MODEL_BYTES = 32 << 20
CHUNK_BYTES = 512 << 10


@pytest.fixture
def few_threads(ray_session, tmp_path) -> Iterator:
    running = start_coordinator(
        tmp_path, rpc_threads=RPC_THREADS, max_watch_streams=STREAMS, max_watch_streams_per_client=2
    )
    yield running
    running.stop(grace_s=1.0)


def _channels(address: str, count: int) -> list[grpc.Channel]:
    return [grpc.insecure_channel(address, options=OWN_CONNECTION) for _ in range(count)]


def _health_watch(channel: grpc.Channel):
    """A Health/Watch stream that has delivered its first message (so the server holds it)."""
    stream = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=10)
    assert next(stream).status == health_pb2.HealthCheckResponse.SERVING
    return stream


def _download(channel: grpc.Channel, job_id: str):
    return pb_grpc.CoordinatorStub(channel).DownloadModel(pb.DownloadModelRequest(job_id=job_id), timeout=30)


def _wait_for_streams(running, count: int) -> None:
    deadline = time.monotonic() + 5
    while running.streams.open_streams() != count:
        assert time.monotonic() < deadline, f"{running.streams.open_streams()} streams open, not {count}"
        time.sleep(0.02)


def test_health_watch_streams_are_capped_and_leave_threads_for_calls(few_threads) -> None:
    """More Health/Watch streams than the server has threads, each on its own connection (they need no
    token): those beyond --max-watch-streams are refused naming it, unary calls still answer, and
    closing the connections frees every place."""
    channels = _channels(few_threads.address, RPC_THREADS + 2)
    held, refused = [], []
    try:
        for channel in channels:
            try:
                held.append(_health_watch(channel))
            except grpc.RpcError as exc:
                refused.append(exc)
        assert len(held) == STREAMS
        assert {exc.code() for exc in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        details = refused[0].details()
        assert f"cannot open another Health/Watch stream: the server has {STREAMS} streams open" in details
        assert "(--max-watch-streams;" in details and "probe with Health/Check" in details
        with CoordinatorClient(few_threads.address, timeout=3) as probe:
            assert probe.list() == []  # a thread is free for it
    finally:
        for channel in channels:
            channel.close()
    _wait_for_streams(few_threads, 0)


def test_streams_of_every_kind_share_the_per_connection_cap(few_threads) -> None:
    """Two Health/Watch streams fill a connection's places: a DownloadModel or WatchJob on it is refused
    (before the job is even looked up), each with its own advice; a cancelled stream frees its place."""
    (channel,) = _channels(few_threads.address, 1)
    with channel:
        streams = [_health_watch(channel), _health_watch(channel)]
        with pytest.raises(grpc.RpcError) as download:
            next(_download(channel, "no-such-job"))
        assert download.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "cannot open another DownloadModel stream: this connection already has 2 streams" in (
            download.value.details()
        )
        assert "--max-watch-streams-per-client" in download.value.details()
        with pytest.raises(grpc.RpcError) as watch:
            next(pb_grpc.CoordinatorStub(channel).WatchJob(pb.WatchJobRequest(job_id="x"), timeout=5))
        assert "close one or poll with GetJob" in watch.value.details()
        streams[0].cancel()
        _wait_for_streams(few_threads, 1)
        streams[1].cancel()
        _wait_for_streams(few_threads, 0)


@pytest.fixture
def big_model(ray_session, tmp_path) -> Iterator:
    """A coordinator with a SUCCEEDED job whose model file is MODEL_BYTES of known bytes."""
    running = start_coordinator(tmp_path, max_message_bytes=2 * CHUNK_BYTES)
    write_blobs(running.config.data_root / "blobs.npz")
    with CoordinatorClient(running.address) as client:
        job = client.submit(small_spec("npz:blobs.npz", epochs=1, numWorkers=1))
        assert wait_for(client, job.id).state == pb.SUCCEEDED
    model = os.urandom(MODEL_BYTES)
    write_durably(JobRunner.model_path(running.config, job.id), model)
    yield running, job.id, model
    running.stop(grace_s=1.0)


def test_stalled_downloads_hold_neither_the_model_in_memory_nor_a_place_once_cancelled(big_model) -> None:
    """Four downloads of a 32 MiB model that read one chunk and stall take less memory than one model
    (each a few chunks: the one read, the one sent, the one read next); each holds a stream place
    until it is cancelled; and one that finishes after the model file was replaced sends the file it
    started with, whole."""
    running, job_id, model = big_model
    channels = _channels(running.address, 4)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        streams = [_download(channel, job_id) for channel in channels]
        firsts = [next(stream) for stream in streams]
        _wait_for_streams(running, 4)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < MODEL_BYTES, f"4 stalled downloads hold {held:,} bytes"
    assert {(first.total_size, len(first.data)) for first in firsts} == {(MODEL_BYTES, CHUNK_BYTES)}

    write_durably(JobRunner.model_path(running.config, job_id), os.urandom(MODEL_BYTES))
    received = firsts[0].data + b"".join(chunk.data for chunk in streams[0])
    assert received == model
    for stream in streams[1:]:
        stream.cancel()
    _wait_for_streams(running, 0)
    for channel in channels:
        channel.close()
