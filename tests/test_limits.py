"""Configured limits on a real coordinator: message sizes both ways and WatchJob streams."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from gradfleet.v1 import coordinator_pb2 as pb
from service.client import CoordinatorClient
from service.config import ServerConfig, config_from_env_and_flags
from service.spec import spec_to_json
from tests.conftest import start_coordinator
from tests.helpers import ROOT, gradfleet_command, small_spec, wait_for, write_blobs

pytestmark = [pytest.mark.integration, pytest.mark.ray]


@pytest.fixture
def limited(ray_session, tmp_path) -> Iterator:
    running = start_coordinator(
        tmp_path,
        max_message_bytes=64 * 1024,
        rpc_threads=8,
        max_watch_streams=3,
        max_watch_streams_per_client=2,
    )
    write_blobs(running.config.data_root / "blobs.npz")
    yield running
    running.stop(grace_s=1.0)


def test_a_request_over_the_message_limit_is_resource_exhausted(limited):
    """A 100 kB request to a server allowing 64 KiB gets RESOURCE_EXHAUSTED naming both sizes."""
    with CoordinatorClient(limited.address) as client, pytest.raises(grpc.RpcError) as caught:
        client.submit(small_spec("npz:blobs.npz", name="x" * 100_000))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "65536" in caught.value.details()


def test_a_reply_over_the_client_limit_is_resource_exhausted(limited):
    """A client allowing 1 KiB replies gets RESOURCE_EXHAUSTED for a larger job list."""
    with CoordinatorClient(limited.address) as client:
        for _ in range(10):  # about 300 bytes each
            client.cancel(client.submit(small_spec("npz:blobs.npz", epochs=1000)).id)
    with (
        CoordinatorClient(limited.address, max_message_bytes=1024) as small,
        pytest.raises(grpc.RpcError) as caught,
    ):
        small.list()
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "1024" in caught.value.details()


def _open_watch(client: CoordinatorClient, job_id: str):
    """A watch stream that has delivered its first event (so the server holds it)."""
    stream = client.watch(job_id)
    assert next(stream).kind == pb.JobEvent.STATE
    return stream


def test_watch_streams_are_capped_per_client_and_in_all(limited):
    """A third stream on one connection, or a fourth in all, is RESOURCE_EXHAUSTED naming the
    limit; a closed stream frees its place; the rest end cleanly when the job does."""
    clients = [CoordinatorClient(limited.address) for _ in range(3)]
    a, b, c = clients
    try:
        job = a.submit(small_spec("npz:blobs.npz", epochs=10_000, numWorkers=1, batchSize=100))
        streams = [_open_watch(a, job.id), _open_watch(a, job.id)]
        with pytest.raises(grpc.RpcError) as per_client:
            _open_watch(a, job.id)
        assert per_client.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        details = per_client.value.details()
        assert "another WatchJob stream: this connection already has 2 streams open" in details
        assert "close one or poll with GetJob" in details
        streams.append(_open_watch(b, job.id))
        with pytest.raises(grpc.RpcError) as total:
            _open_watch(c, job.id)
        assert "the server has 3 streams open, its limit (--max-watch-streams" in total.value.details()
        assert "retry later or poll with GetJob" in total.value.details()
        streams.pop(0).cancel()
        deadline = time.monotonic() + 5
        while limited.streams.open_streams() > 2:
            assert time.monotonic() < deadline, "a cancelled stream kept its place"
            time.sleep(0.05)
        streams.append(_open_watch(c, job.id))
        a.cancel(job.id)
        for stream in streams:
            last = list(stream)[-1]
            assert (last.kind, last.job.state) == (pb.JobEvent.STATE, pb.CANCELLED)
        wait_for(a, job.id)
        assert limited.streams.open_streams() == 0
    finally:
        for client in clients:
            client.close()


def test_submit_watch_polls_when_every_watch_stream_is_taken(limited, tmp_path):
    """With all --max-watch-streams taken, `gradfleet submit --watch` says once on stderr that it polls
    GetJob, shows the job's states (QUEUED with why it waits, then RUNNING) and ends with the summary
    and exit 0, as with a stream: a script keyed on the exit code must not resubmit."""
    a, b = CoordinatorClient(limited.address), CoordinatorClient(limited.address)
    try:
        blocker = a.submit(small_spec("npz:blobs.npz", epochs=10_000, numWorkers=1, batchSize=100))
        queued = a.submit(small_spec("npz:blobs.npz", epochs=1, numWorkers=1))
        streams = [_open_watch(a, queued.id), _open_watch(a, queued.id), _open_watch(b, queued.id)]
        path = tmp_path / "job.json"
        path.write_text(spec_to_json(small_spec("npz:blobs.npz", epochs=1, numWorkers=1)))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        command = gradfleet_command("submit", str(path), "--watch", "--server", limited.address)
        watching = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        job_id = watching.stdout.readline().split()[2]
        notice = watching.stderr.readline()
        for job in (blocker, queued):
            a.cancel(job.id)
        for stream in streams:
            assert list(stream)[-1].job.state == pb.CANCELLED
        out, err = watching.communicate(timeout=120)
    finally:
        a.close()
        b.close()
    assert watching.returncode == 0, err
    assert notice == (
        f"following job {job_id} by polling GetJob every 1 s: the server has no WatchJob stream to spare "
        "(cannot open another WatchJob stream: the server has 3 streams open, its limit "
        "(--max-watch-streams; WatchJob, DownloadModel and Health/Watch streams count together); retry later "
        "or poll with GetJob)\n"
    )
    assert "polling" not in err  # said once
    lines = out.splitlines()
    assert lines[0] == (
        f"job {job_id} QUEUED: waiting for a running slot (--max-running-jobs 1, 1 running; 1 job queued "
        "ahead of it)"
    )
    assert any(line.startswith(f"job {job_id} RUNNING") for line in lines)
    assert lines[-1].startswith(f"job {job_id} SUCCEEDED in ")


def test_a_model_larger_than_the_message_limit_downloads_in_chunks(ray_session, tmp_path):
    """With --max-message-bytes far under 1 MiB, DownloadModel cuts the model into chunks of half
    the limit, so a model larger than one message still arrives whole."""
    running = start_coordinator(tmp_path, max_message_bytes=4096)
    try:
        write_blobs(running.config.data_root / "blobs.npz")
        with CoordinatorClient(running.address) as client:
            job = client.submit(small_spec("npz:blobs.npz", epochs=1, numWorkers=1))
            assert wait_for(client, job.id).state == pb.SUCCEEDED
            size = client.download(job.id, tmp_path / "model.npz")
    finally:
        running.stop(grace_s=1.0)
    assert running.config.download_chunk_bytes == 2048
    assert size > 4096  # more than one message could carry
    with np.load(tmp_path / "model.npz", allow_pickle=False) as model:
        assert model["layer_0_weight"].shape == (20, 16)


def test_limits_come_from_flags_and_environment():
    """Flags win over GRADFLEET_* variables, which win over defaults; impossible mixes are refused."""
    config = config_from_env_and_flags(
        {"max_params": 10, "tokens_file": "t"},
        {"GRADFLEET_MAX_PARAMS": "20", "GRADFLEET_MAX_DATASET_BYTES": "30", "GRADFLEET_TLS_CERT": "c"}
        | {"GRADFLEET_TLS_KEY": "k"},
    )
    assert (config.max_params, config.max_dataset_bytes, str(config.tokens_file)) == (10, 30, "t")
    assert (str(config.tls_cert), str(config.tls_key)) == ("c", "k")
    with pytest.raises(ValueError, match="--rpc-threads: got 0; must be at least 1"):
        ServerConfig(rpc_threads=0)
    with pytest.raises(ValueError, match="--max-message-bytes: got 1000; must be between 4096 and"):
        ServerConfig(max_message_bytes=1000)
    with pytest.raises(ValueError, match="--tls-cert and --tls-key go together"):
        ServerConfig(tls_cert="c")
