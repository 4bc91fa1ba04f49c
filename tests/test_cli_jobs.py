"""CLI commands against a real coordinator, in process: what submit, get and download print and write
for repeated request ids, regression and multi-label jobs, scaled jobs and `-o DIR/`."""

from __future__ import annotations

import concurrent.futures
import json
import math
import re
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import json_format

from gradfleet.v1 import coordinator_pb2 as pb
from service import cli
from service.client import CoordinatorClient
from service.spec import spec_to_json
from tests.helpers import small_spec, wait_for, write_blobs

pytestmark = [pytest.mark.integration, pytest.mark.ray]


def _run(capsys, coordinator, *argv: str) -> str:
    code = cli.main([*argv, "--server", coordinator.address])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_resubmitting_a_request_id_says_the_job_was_already_submitted(capsys, client, coordinator, tmp_path):
    """A job file with a request id submitted again prints which job it already made, not "submitted"."""
    write_blobs(coordinator.config.data_root / "blobs.npz")
    path = tmp_path / "rid.json"
    path.write_text(spec_to_json(small_spec("npz:blobs.npz", epochs=1, requestId="rid-1")))
    first = _run(capsys, coordinator, "submit", str(path))
    assert first.startswith("submitted job ")
    job_id = first.split()[2]
    assert wait_for(client, job_id).state == pb.SUCCEEDED
    again = _run(capsys, coordinator, "submit", str(path)).splitlines()[0]
    assert again.startswith(f"request id rid-1 was already submitted as job {job_id} (small), created ")
    assert again.endswith(", now SUCCEEDED; no new job was queued")
    assert len(client.list()) == 1


def test_an_immediate_resubmit_says_the_job_was_already_submitted(capsys, client, coordinator, tmp_path):
    """Submitted again at once, while the first job is still QUEUED and created this very second, the
    CLI still says which job the request id made: the server says so, the CLI does not guess."""
    write_blobs(coordinator.config.data_root / "long.npz", n_train=5000)
    blockers = [
        client.submit(small_spec("npz:long.npz", epochs=1000, batchSize=10, numWorkers=1))
        for _ in range(coordinator.config.max_running_jobs)
    ]
    path = tmp_path / "rid.json"
    path.write_text(spec_to_json(small_spec("npz:long.npz", epochs=1, numWorkers=1, requestId="rid-now")))
    first = _run(capsys, coordinator, "submit", str(path)).splitlines()[0]
    job_id = first.split()[2]
    # Its message says why it waits: the blocker holds the only slot (or is about to take it).
    assert re.fullmatch(
        rf"submitted job {job_id} \(small\), QUEUED: waiting for a running slot \(--max-running-jobs 1, "
        r"(1 running|0 running; 1 job queued ahead of it)\)",
        first,
    ), first
    again = _run(capsys, coordinator, "submit", str(path)).splitlines()[0]
    assert again.startswith(f"request id rid-now was already submitted as job {job_id} (small), created ")
    assert again.endswith(", now QUEUED; no new job was queued")
    assert len(client.list()) == len(blockers) + 1


def test_list_as_json_prints_a_jobs_list_even_when_empty(capsys, client, coordinator):
    """`list -O json` prints a ListJobsResponse, `{"jobs": [...]}`, as the README says, and with no
    matching jobs `{"jobs": []}` (protobuf's printer leaves an empty list out: `{}`)."""
    assert json.loads(_run(capsys, coordinator, "list", "-O", "json")) == {"jobs": []}
    write_blobs(coordinator.config.data_root / "blobs.npz")
    job = client.submit(small_spec("npz:blobs.npz", epochs=1))
    listed = json_format.Parse(_run(capsys, coordinator, "list", "-O", "json"), pb.ListJobsResponse())
    assert [j.id for j in listed.jobs] == [job.id]
    assert json.loads(_run(capsys, coordinator, "list", "-O", "json", "--state", "FAILED")) == {"jobs": []}
    client.cancel(job.id)


def test_submit_with_status_reports_whether_the_server_created_the_job(client, coordinator):
    """A real server's answer: a new request id (or none) is created; the same request id sent again
    at once (within the second the job was created) is the existing job, from a fresh client too."""
    write_blobs(coordinator.config.data_root / "blobs.npz")
    spec = small_spec("npz:blobs.npz", epochs=1, requestId="rid-status")
    job, created = client.submit_with_status(spec)
    again, created_again = client.submit_with_status(spec)
    assert created and not created_again and again.id == job.id
    other, created_other = client.submit_with_status(small_spec("npz:blobs.npz", epochs=1, requestId="rid-2"))
    assert created_other and other.id != job.id
    assert client.submit_with_status(small_spec("npz:blobs.npz", epochs=1))[1]
    with CoordinatorClient(coordinator.address) as fresh:
        found, created_fresh = fresh.submit_with_status(spec)
    assert not created_fresh and found.id == job.id
    assert client.submit(spec).id == job.id  # submit() still returns just the job
    assert len(client.list()) == 3


def test_racing_submits_of_one_request_id_report_one_created(client, coordinator):
    """Eight clients sending the same request id at once get one job; exactly one hears it was created."""
    write_blobs(coordinator.config.data_root / "blobs.npz")
    spec = small_spec("npz:blobs.npz", epochs=1, requestId="rid-race")
    start = threading.Barrier(8)

    def submit() -> tuple[str, bool]:
        with CoordinatorClient(coordinator.address) as own:
            start.wait()
            job, created = own.submit_with_status(spec)
        return job.id, created

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: submit(), range(8)))
    assert len({job_id for job_id, _ in answers}) == 1
    assert sorted(created for _, created in answers) == [False] * 7 + [True]
    assert len(client.list()) == 1


def test_download_into_a_folder_named_with_a_trailing_slash_creates_it(capsys, client, coordinator, tmp_path):
    """`download JOB -o nodir/` makes the folder and writes nodir/JOB.npz, never a file `nodir`."""
    write_blobs(coordinator.config.data_root / "blobs.npz")
    job = wait_for(client, client.submit(small_spec("npz:blobs.npz", epochs=1)).id)
    out = _run(capsys, coordinator, "download", job.id, "-o", f"{tmp_path / 'nodir'}/")
    assert (tmp_path / "nodir" / f"{job.id}.npz").is_file()
    assert out.startswith("wrote ") and f"{tmp_path / 'nodir' / job.id}.npz" in out
    (tmp_path / "plain").write_text("")
    assert (
        cli.main(["download", job.id, "-o", f"{tmp_path / 'plain'}/", "--server", coordinator.address]) == 2
    )
    assert f"{tmp_path / 'plain'} exists and is not a folder" in capsys.readouterr().err


def test_cancelling_an_ended_job_says_it_had_already_ended(capsys, client, coordinator):
    """A cancel that ends a queued job says CANCELLED; cancelling it again says the job had already
    ended, like for a SUCCEEDED one."""
    write_blobs(coordinator.config.data_root / "long.npz", n_train=5000)
    blockers = [
        client.submit(small_spec("npz:long.npz", epochs=1000, batchSize=10, numWorkers=1))
        for _ in range(coordinator.config.max_running_jobs)
    ]
    queued = client.submit(small_spec("npz:long.npz", epochs=1000, numWorkers=1))
    assert client.get(queued.id).state == pb.QUEUED
    assert "CANCELLED" in _run(capsys, coordinator, "cancel", queued.id)
    again = _run(capsys, coordinator, "cancel", queued.id)
    assert again.strip() == f"job {queued.id} had already ended: CANCELLED; nothing to cancel"
    for blocker in blockers:
        client.cancel(blocker.id)


def test_get_shows_the_worker_count_after_scale(capsys, client, coordinator):
    write_blobs(coordinator.config.data_root / "long.npz", n_train=5000)
    job = client.submit(small_spec("npz:long.npz", epochs=1000, batchSize=10, numWorkers=1))
    # Labels are padded to the longest one shown ("throughput:" once the job reports a rate).
    workers = re.compile(r"^workers:\s+(\d+)", re.MULTILINE)
    assert workers.findall(_run(capsys, coordinator, "get", job.id)) == ["1"]
    client.scale(job.id, 2)
    deadline = time.monotonic() + 60
    while workers.findall(shown := _run(capsys, coordinator, "get", job.id)) != ["2"]:
        assert time.monotonic() < deadline, f"get never showed 2 workers:\n{shown}"
        time.sleep(0.1)
    client.cancel(job.id)


def _float_targets(path: Path, targets, n: int = 300) -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((n, 8)).astype(np.float32)
    y = targets(x).astype(np.float32)
    np.savez(path, x_train=x[:200], y_train=y[:200], x_test=x[200:], y_test=y[200:])


@pytest.mark.parametrize(
    ("loss", "targets", "shown"),
    [
        ("MEAN_SQUARED_ERROR", lambda x: x[:, :2] * 2 + 1, "metrics: MSE "),
        ("BINARY_CROSS_ENTROPY", lambda x: x[:, :3] > 0, "eval: per-label accuracy "),
    ],
)
def test_jobs_with_float_targets_report_no_accuracy(capsys, client, coordinator, loss, targets, shown):
    """A regression or multi-label job ends with no accuracy in its record, its `get` output or the
    accuracy gauge, and with the figures that apply to it."""
    _float_targets(coordinator.config.data_root / "float.npz", targets)
    units = 2 if loss == "MEAN_SQUARED_ERROR" else 3
    spec = small_spec(
        "npz:float.npz", loss=loss, epochs=3, layers=[{"units": 16, "activation": "RELU"}, {"units": units}]
    )
    job = wait_for(client, client.submit(spec).id)
    assert job.state == pb.SUCCEEDED, job.message
    assert math.isnan(job.progress.eval_accuracy)
    if loss == "BINARY_CROSS_ENTROPY":
        assert 0.6 < job.progress.eval_label_accuracy <= 1.0
    else:
        assert math.isfinite(job.progress.eval_mse) and math.isnan(job.progress.eval_label_accuracy)
    text = " ".join(_run(capsys, coordinator, "get", job.id).split())  # labels are padded to one width
    assert shown in text and "eval: accuracy" not in text
    url = f"http://127.0.0.1:{coordinator.metrics_port}/metrics"
    scraped = urllib.request.urlopen(url, timeout=5).read().decode()
    assert f'gradfleet_job_eval_loss{{job_id="{job.id}"}}' in scraped
    assert f'gradfleet_job_eval_accuracy{{job_id="{job.id}"}}' not in scraped
