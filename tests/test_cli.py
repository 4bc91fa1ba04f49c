"""The `gradfleet` console script end to end against a real coordinator: submit with --watch and
with --output json, and scale."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from google.protobuf import json_format

from gradfleet.v1 import coordinator_pb2 as pb
from service.spec import spec_to_json
from tests.helpers import ROOT, gradfleet_command, small_spec, wait_for, write_blobs

pytestmark = [pytest.mark.integration, pytest.mark.ray]


def run_cli(address: str, *args: str, timeout_s: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = gradfleet_command(*args, "--server", address)
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)


def job_file(folder: Path, **overrides) -> Path:
    """A JSON job file (protobuf's JSON mapping) training on blobs.npz in the data root."""
    path = folder / "job.json"
    path.write_text(spec_to_json(small_spec("npz:blobs.npz", **overrides)))
    return path


def test_submit_watch_exits_zero_with_the_summary_line(client, coordinator, tmp_path) -> None:
    """`gradfleet submit FILE --watch` follows the job to SUCCEEDED, exits 0 and ends with the
    one-line summary."""
    write_blobs(coordinator.config.data_root / "blobs.npz")
    done = run_cli(coordinator.address, "submit", str(job_file(tmp_path)), "--watch")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    job_id = lines[0].split()[2]
    assert lines[0] == f"submitted job {job_id} (small)"
    assert lines[-1].startswith(f"job {job_id} SUCCEEDED in ")
    assert ": test accuracy " in lines[-1]
    assert client.get(job_id).state == pb.SUCCEEDED


def test_submit_output_json_prints_a_job_that_parses(client, coordinator, tmp_path) -> None:
    """`gradfleet submit FILE --output json` prints the new Job in protobuf's JSON mapping, with
    the submitted spec and a state of QUEUED or RUNNING."""
    write_blobs(coordinator.config.data_root / "blobs.npz")
    done = run_cli(coordinator.address, "submit", str(job_file(tmp_path, epochs=1)), "--output", "json")
    assert done.returncode == 0, done.stderr
    job = json_format.Parse(done.stdout, pb.Job())
    assert job.id and job.state in (pb.QUEUED, pb.RUNNING)
    assert (job.spec.name, job.spec.epochs, job.spec.dataset.uri) == ("small", 1, "npz:blobs.npz")
    assert wait_for(client, job.id).state == pb.SUCCEEDED


def test_scale_changes_a_running_jobs_worker_count(client, coordinator) -> None:
    """`gradfleet scale JOB 3` exits 0, says so, and the running job switches to 3 workers; with only
    2 micro-shards, the CLI and the job's message say that one of them is idle."""
    write_blobs(coordinator.config.data_root / "long.npz", n_train=5000)
    job = client.submit(small_spec("npz:long.npz", epochs=1000, batchSize=10, numWorkers=1, microShards=2))
    wait_for(client, job.id, states={pb.RUNNING}, timeout_s=60)
    done = run_cli(coordinator.address, "scale", job.id, "3", timeout_s=60)
    assert done.returncode == 0, done.stderr
    idle = (
        "1 of the 3 workers is idle: a batch is split into micro_shards 2, and each worker computes whole "
        "micro-shards; to use them all, resubmit with micro_shards 3 or more, or scale to 2 workers"
    )
    said = f"job {job.id} (RUNNING) runs with 3 workers within about a second, at a step boundary"
    assert done.stdout.splitlines() == [said, f"note: {idle}"]
    deadline = time.monotonic() + 60
    while not client.get(job.id).message.startswith("scaled from 1 to 3 workers at step "):
        assert time.monotonic() < deadline, "the job never switched to 3 workers"
        time.sleep(0.05)
    scaled = client.get(job.id)
    assert scaled.spec.num_workers == 3
    assert scaled.message.endswith(f"; {idle}")
    client.cancel(job.id)
    assert wait_for(client, job.id, timeout_s=30).state == pb.CANCELLED


def test_download_into_a_folder_or_to_standard_output(client, coordinator, tmp_path) -> None:
    """`download JOB -o DIR` with an existing folder writes DIR/JOB.npz; `-o -` writes the model's
    bytes to standard output and its note to stderr, leaving no file named `-`."""
    write_blobs(coordinator.config.data_root / "blobs.npz")
    job = wait_for(client, client.submit(small_spec("npz:blobs.npz", epochs=1)).id)
    assert job.state == pb.SUCCEEDED, job.message
    client.download(job.id, tmp_path / "direct.npz")
    model = (tmp_path / "direct.npz").read_bytes()
    folder = tmp_path / "models"
    folder.mkdir()
    done = run_cli(coordinator.address, "download", job.id, "-o", str(folder), timeout_s=60)
    assert done.returncode == 0, done.stderr
    assert (folder / f"{job.id}.npz").read_bytes() == model
    assert done.stdout.startswith(f"wrote {len(model):,} bytes to {folder / job.id}.npz: the final model")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = gradfleet_command("download", job.id, "-o", "-", "--server", coordinator.address)
    piped = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, timeout=60)
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == model
    assert piped.stderr.decode().startswith(f"wrote {len(model):,} bytes to standard output")
    assert not (tmp_path / "-").exists()
    closed = subprocess.run(
        command,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        capture_output=False,
        stderr=subprocess.PIPE,
        timeout=60,
        preexec_fn=lambda: os.close(1),
    )
    assert closed.returncode == 2, closed.stderr
    assert b"standard output is closed" in closed.stderr and b"Traceback" not in closed.stderr


def test_a_downloaded_model_gets_the_umask_s_mode_not_mkstemp_s(client, coordinator, tmp_path) -> None:
    """The model file is a plain file: with umask 022 it is 0644 (mkstemp alone made it 0600)."""
    write_blobs(coordinator.config.data_root / "blobs.npz")
    job = wait_for(client, client.submit(small_spec("npz:blobs.npz", epochs=1)).id)
    previous = os.umask(0o022)
    try:
        client.download(job.id, tmp_path / "m.npz")
    finally:
        os.umask(previous)
    assert (tmp_path / "m.npz").stat().st_mode & 0o777 == 0o644


def test_download_to_a_pipe_closed_early_fails_without_claiming_success(
    client, coordinator, tmp_path
) -> None:
    """`download JOB -o - | head -c 1`: the reader goes away while the model (one chunk, larger than
    the 64 KiB pipe buffer) is being written. The write comes back short, and the CLI must go on
    to the broken pipe (exit 141), never exit 0 with "wrote N bytes" after a truncated copy."""
    write_blobs(coordinator.config.data_root / "wide.npz", features=100)
    spec = small_spec("npz:wide.npz", epochs=1, layers=[{"units": 1024, "activation": "RELU"}, {"units": 3}])
    job = wait_for(client, client.submit(spec).id)
    assert job.state == pb.SUCCEEDED, job.message
    client.download(job.id, tmp_path / "model.npz")
    size = (tmp_path / "model.npz").stat().st_size
    assert 256 * 1024 < size < 1024 * 1024  # several pipe buffers, one download chunk
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = gradfleet_command("download", job.id, "-o", "-", "--server", coordinator.address)
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout.read(1)  # the model's single write has begun and fills the pipe
    process.stdout.close()  # as `head -c 1` exits
    _, err = process.communicate(timeout=60)
    assert process.returncode == 141, err.decode()
    assert "wrote" not in err.decode()
