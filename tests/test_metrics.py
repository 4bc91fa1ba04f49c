"""The metrics module on a fresh registry: names, exact counters, live gauges and retirement of job series."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from gradfleet.v1 import coordinator_pb2 as pb
from service.metrics import STEP_PHASES, Metrics
from service.param_server import StepStats
from tests.conftest import require
from tests.helpers import small_spec, wait_for, write_blobs

JOB = "job1"


def step(n: int, samples: int = 50, loss: float = 0.5) -> StepStats:
    return StepStats(
        epoch=1,
        step=n,
        samples=samples,
        loss=loss,
        learning_rate=0.01,
        grad_norm=2.5,
        step_seconds=0.010,
        compute_seconds=0.006,
        reduce_seconds=0.001,
        apply_seconds=0.002,
    )


@pytest.fixture
def metrics() -> Metrics:
    counts = {pb.QUEUED: 2, pb.RUNNING: 1, pb.SUCCEEDED: 0, pb.FAILED: 3, pb.CANCELLED: 0}
    return Metrics(CollectorRegistry(), lambda: counts, retire_after_s=0.2)


def value(metrics: Metrics, name: str, **labels) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_every_name_follows_the_naming_rule(metrics) -> None:
    """Every family starts with gradfleet_, and promtool's linter finds nothing in the exposition."""
    require(shutil.which("promtool") is not None, "promtool not installed (Debian package prometheus)")
    metrics.start_job(JOB, 2)
    metrics.record_steps(JOB, [step(1)], samples_per_second=100.0)
    metrics.record_call("/gradfleet.v1.Coordinator/GetJob", "OK", 0.001)
    families = list(metrics.registry.collect())
    assert len(families) >= 20
    assert all(family.name.startswith("gradfleet_") for family in families)
    lint = subprocess.run(
        ["promtool", "check", "metrics"],
        input=generate_latest(metrics.registry),
        capture_output=True,
        timeout=30,
    )
    assert lint.returncode == 0, lint.stdout.decode() + lint.stderr.decode()


def test_a_started_job_has_zero_series_before_its_first_step(metrics) -> None:
    """start_job creates the counters and every phase histogram at zero, and sets the worker count."""
    metrics.start_job(JOB, 3)
    assert value(metrics, "gradfleet_job_samples_total", job_id=JOB) == 0
    assert value(metrics, "gradfleet_job_steps_total", job_id=JOB) == 0
    assert value(metrics, "gradfleet_job_workers", job_id=JOB) == 3
    for phase in STEP_PHASES:
        assert value(metrics, "gradfleet_job_step_phase_seconds_count", job_id=JOB, phase=phase) == 0


def test_steps_update_counters_exactly_and_gauges_to_the_last_step(metrics) -> None:
    """Two batches of steps add up exactly; the gauges hold the last step's values."""
    metrics.start_job(JOB, 2)
    metrics.record_steps(JOB, [step(1, 50), step(2, 50)], samples_per_second=1000.0)
    metrics.record_steps(JOB, [step(3, 13, loss=0.25)], samples_per_second=900.0)
    assert value(metrics, "gradfleet_job_samples_total", job_id=JOB) == 113
    assert value(metrics, "gradfleet_job_steps_total", job_id=JOB) == 3
    assert value(metrics, "gradfleet_job_loss", job_id=JOB) == 0.25
    assert value(metrics, "gradfleet_job_samples_per_second", job_id=JOB) == 900.0
    assert value(metrics, "gradfleet_job_learning_rate", job_id=JOB) == 0.01
    assert value(metrics, "gradfleet_job_gradient_norm", job_id=JOB) == 2.5
    assert value(metrics, "gradfleet_job_step_seconds_count", job_id=JOB) == 3
    wait = value(metrics, "gradfleet_job_step_phase_seconds_sum", job_id=JOB, phase="wait")
    assert wait == pytest.approx(3 * 0.001)  # 10 ms minus 6 + 1 + 2 ms
    assert value(metrics, "gradfleet_param_server_apply_seconds_count") == 3
    assert value(metrics, "gradfleet_param_server_apply_seconds_sum") == pytest.approx(0.006)


def test_eval_and_grpc_calls_are_recorded(metrics) -> None:
    """Eval loss and accuracy are gauges; a gRPC call counts by method and code and is timed."""
    metrics.record_eval(JOB, 0.4, 0.875)
    metrics.record_call("/gradfleet.v1.Coordinator/GetJob", "NOT_FOUND", 0.003)
    assert value(metrics, "gradfleet_job_eval_loss", job_id=JOB) == 0.4
    assert value(metrics, "gradfleet_job_eval_accuracy", job_id=JOB) == 0.875
    method = "/gradfleet.v1.Coordinator/GetJob"
    assert value(metrics, "gradfleet_grpc_requests_total", method=method, code="NOT_FOUND") == 1
    assert value(metrics, "gradfleet_grpc_request_duration_seconds_count", method=method) == 1


def test_a_job_without_an_accuracy_has_no_accuracy_series(metrics) -> None:
    """A regression's evaluation (accuracy NaN) sets the eval loss but no accuracy gauge at 0."""
    metrics.record_eval(JOB, 0.25, float("nan"))
    assert value(metrics, "gradfleet_job_eval_loss", job_id=JOB) == 0.25
    assert value(metrics, "gradfleet_job_eval_accuracy", job_id=JOB) is None


def test_service_gauges_are_read_from_their_owners_at_scrape_time(metrics) -> None:
    """Jobs by state, queue length, oldest queued wait and live workers come from callbacks."""
    live = {"queued": 2, "age": 12.5, "workers": 4}
    metrics.read_live_values(lambda: live["queued"], lambda: live["age"], lambda: live["workers"])
    assert value(metrics, "gradfleet_jobs", state="failed") == 3
    assert value(metrics, "gradfleet_queue_length") == 2
    assert value(metrics, "gradfleet_queue_oldest_age_seconds") == 12.5
    live["workers"] = 0
    assert value(metrics, "gradfleet_workers_alive") == 0


def test_finished_job_keeps_its_series_for_the_delay_then_loses_them(metrics) -> None:
    """A finished job's series stay for the configured delay (0.2 s here), then all disappear."""
    metrics.start_job(JOB, 2)
    metrics.record_steps(JOB, [step(1)], samples_per_second=100.0)
    metrics.record_eval(JOB, 0.4, 0.9)
    metrics.record_checkpoint(JOB)
    metrics.finish_job(JOB, "succeeded")
    assert value(metrics, "gradfleet_jobs_finished_total", state="succeeded") == 1
    assert value(metrics, "gradfleet_job_workers", job_id=JOB) == 0
    assert value(metrics, "gradfleet_job_loss", job_id=JOB) == 0.5
    assert value(metrics, "gradfleet_job_checkpoint_timestamp_seconds", job_id=JOB) is not None
    deadline = time.monotonic() + 10
    while value(metrics, "gradfleet_job_loss", job_id=JOB) is not None:
        assert time.monotonic() < deadline, "the job's series were never removed"
        time.sleep(0.02)
    remaining = [
        s for family in metrics.registry.collect() for s in family.samples if s.labels.get("job_id") == JOB
    ]
    assert remaining == []
    assert value(metrics, "gradfleet_jobs_finished_total", state="succeeded") == 1  # never goes back


def test_a_divergence_shows_its_non_finite_loss_until_the_next_step(metrics) -> None:
    """record_divergence sets the loss gauge to NaN or +Inf as exported text Prometheus parses; a
    finite loss or None leaves the gauge alone; the next applied step replaces it."""
    metrics.record_steps(JOB, [step(1, loss=0.5)], samples_per_second=100.0)
    metrics.record_divergence(JOB, None)
    metrics.record_divergence(JOB, 3.0)
    assert value(metrics, "gradfleet_job_loss", job_id=JOB) == 0.5
    metrics.record_divergence(JOB, float("nan"))
    assert f'gradfleet_job_loss{{job_id="{JOB}"}} NaN' in generate_latest(metrics.registry).decode()
    metrics.record_divergence("other", float("-inf"))
    assert value(metrics, "gradfleet_job_loss", job_id="other") == float("-inf")
    metrics.record_steps(JOB, [step(2, loss=0.25)], samples_per_second=100.0)
    assert value(metrics, "gradfleet_job_loss", job_id=JOB) == 0.25


def test_checkpoints_are_counted_and_timestamped(metrics) -> None:
    """Each record_checkpoint counts one checkpoint and sets the job's checkpoint time to now."""
    before = time.time()
    metrics.record_checkpoint(JOB)
    first = value(metrics, "gradfleet_job_checkpoint_timestamp_seconds", job_id=JOB)
    assert before <= first <= time.time()
    time.sleep(0.01)
    metrics.record_checkpoint(JOB)
    metrics.record_checkpoint("other")
    assert value(metrics, "gradfleet_job_checkpoint_timestamp_seconds", job_id=JOB) > first
    assert value(metrics, "gradfleet_checkpoints_written_total") == 3


def test_retiring_a_job_drops_its_checkpoint_time_only(metrics) -> None:
    """A job finished with no delay loses its checkpoint-time series; other jobs and the
    service-wide checkpoint counter keep theirs."""
    metrics.record_checkpoint(JOB)
    metrics.record_checkpoint("other")
    metrics.finish_job(JOB, "succeeded", retire_after_s=0)
    assert value(metrics, "gradfleet_job_checkpoint_timestamp_seconds", job_id=JOB) is None
    assert value(metrics, "gradfleet_job_checkpoint_timestamp_seconds", job_id="other") is not None
    assert value(metrics, "gradfleet_checkpoints_written_total") == 2


@pytest.mark.integration
@pytest.mark.ray
def test_coordinator_drops_a_finished_jobs_series_after_the_configured_delay(ray_session, tmp_path) -> None:
    """With metrics_retire_after_s=3, a real coordinator exports a finished job's series, then drops them."""
    from service.client import CoordinatorClient
    from service.config import ServerConfig
    from service.server import start_server

    (tmp_path / "data").mkdir()
    write_blobs(tmp_path / "data" / "blobs.npz")
    config = ServerConfig(
        port=0,
        metrics_port=0,
        state_dir=tmp_path / "state",
        data_root=tmp_path / "data",
        metrics_retire_after_s=3.0,
    )
    running = start_server(config)
    try:
        with CoordinatorClient(running.address) as client:
            job = wait_for(client, client.submit(small_spec("npz:blobs.npz", epochs=1)).id, timeout_s=120)
        assert job.state == pb.SUCCEEDED, job.message
        url = f"http://127.0.0.1:{running.metrics_port}/metrics"
        series = f'gradfleet_job_steps_total{{job_id="{job.id}"}} 12.0'
        finished_at = time.monotonic()
        seen = series in urllib.request.urlopen(url, timeout=5).read().decode()
        while series in urllib.request.urlopen(url, timeout=5).read().decode():
            assert time.monotonic() - finished_at < 20, "the finished job's series were never removed"
            time.sleep(0.1)
        assert seen, "the finished job's series were gone before the delay"
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        assert 'gradfleet_jobs_finished_total{state="succeeded"} 1.0' in text
        assert job.id not in text
    finally:
        running.stop(grace_s=1.0)


def test_docs_table_lists_every_exported_metric(metrics) -> None:
    """The README's metrics table has a row for every metric family, counters with their _total suffix."""
    from pathlib import Path

    docs = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for family in metrics.registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        assert f"| `{name}` |" in docs, name
