"""The Grafana dashboard, checked three ways: every query against a real Prometheus scraping a real
coordinator, a round trip through Grafana's schema library, and every metric it names against the exporter."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import grpc
import pytest
from prometheus_client import CollectorRegistry

from gradfleet.v1 import coordinator_pb2 as pb
from service.metrics import Metrics
from service.param_server import StepStats
from tests.helpers import small_spec, wait_for, write_blobs
from tests.promserver import running_prometheus

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "gradfleet.json"
JOB_VARIABLE_QUERY = "label_values(gradfleet_job_steps_total, job_id)"
RATE_INTERVAL = "5s"  # Grafana's $__rate_interval is at least 4 scrape intervals (1 s in the test)
QUERY_DEADLINE_S = 180.0


def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(dashboard: dict) -> list[dict]:
    """Every panel, including those nested in collapsed rows."""
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def expressions(dashboard: dict) -> list[str]:
    return [target["expr"] for panel in panels(dashboard) for target in panel.get("targets", [])]


def fill_variables(expr: str, job_id: str) -> str:
    return expr.replace("$job_id", job_id).replace("$__rate_interval", RATE_INTERVAL)


def has_finite_value(result: list[dict]) -> bool:
    return any(math.isfinite(float(value)) for series in result for _, value in series["values"])


def test_dashboard_has_the_panels_the_issue_asks_for() -> None:
    """The dashboard selects jobs by job_id and shows loss, accuracy, throughput, phases, workers and gRPC."""
    dashboard = load_dashboard()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["job_id"]["query"]["query"] == JOB_VARIABLE_QUERY
    assert variables["job_id"]["multi"] is True
    titles = " | ".join(p["title"] for p in panels(dashboard))
    for word in ("Loss", "Eval accuracy", "Throughput", "p50", "p95", "Workers", "Learning rate"):
        assert word in titles
    for word in ("Gradient norm", "Jobs by state", "gRPC requests", "gRPC errors"):
        assert word in titles
    job_exprs = [e for e in expressions(dashboard) if "gradfleet_job_" in e]
    assert job_exprs and all('job_id=~"$job_id"' in e for e in job_exprs)


def test_dashboard_survives_a_round_trip_through_the_grafana_schema() -> None:
    """grafana-foundation-sdk parses and re-serialises the dashboard without dropping or changing a key."""
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models.dashboard import Dashboard

    register_default_plugins()
    original = load_dashboard()
    again = json.loads(json.dumps(Dashboard.from_json(original), cls=JSONEncoder))
    assert _lost(original, again) == []


def _lost(original, again, path: str = "") -> list[str]:
    """Keys of `original` missing or different in `again`; keys `again` adds (defaults) are fine."""
    if isinstance(original, dict) and isinstance(again, dict):
        return [
            problem
            for key, value in original.items()
            for problem in (
                _lost(value, again[key], f"{path}/{key}") if key in again else [f"{path}/{key} dropped"]
            )
        ]
    if isinstance(original, list) and isinstance(again, list) and len(original) == len(again):
        return [
            p
            for i, (a, b) in enumerate(zip(original, again, strict=True))
            for p in _lost(a, b, f"{path}[{i}]")
        ]
    return [] if original == again else [f"{path}: {original!r} became {again!r}"]


def exported_sample_names() -> set[str]:
    """Sample names a coordinator exports once every recorder has been called."""
    metrics = Metrics(CollectorRegistry(), lambda: {pb.QUEUED: 0})
    metrics.read_live_values(lambda: 0, lambda: 0.0, lambda: 0)
    metrics.start_job("j", 1)
    stats = StepStats(1, 1, 10, 0.5, 0.1, 1.0, 0.01, 0.005, 0.001, 0.001)
    metrics.record_steps("j", [stats], 100.0)
    metrics.record_eval("j", 0.5, 0.8)
    metrics.record_call("/m", "OK", 0.001)
    return {sample.name for family in metrics.registry.collect() for sample in family.samples}


def test_every_metric_on_the_dashboard_is_exported() -> None:
    """Each gradfleet_* name in a panel query (and the job selector) is a sample the exporter produces."""
    names = set()
    for expr in [*expressions(load_dashboard()), JOB_VARIABLE_QUERY]:
        names.update(re.findall(r"\bgradfleet_[a-z_]+", expr))
    assert len(names) >= 15
    missing = sorted(names - exported_sample_names())
    assert missing == []


@pytest.mark.integration
@pytest.mark.ray
@pytest.mark.slow
def test_every_dashboard_query_returns_data_from_a_real_prometheus(client, coordinator, tmp_path) -> None:
    """With Prometheus scraping a coordinator that trains a job, every panel query returns finite data."""
    write_blobs(coordinator.config.data_root / "blobs.npz")
    with running_prometheus([f"127.0.0.1:{coordinator.metrics_port}"], tmp_path) as prometheus:
        start = time.time()
        job = client.submit(small_spec("npz:blobs.npz", epochs=10_000, batchSize=10))
        try:
            with pytest.raises(grpc.RpcError):  # one failed call, so the errors panel has a series
                client.get("no-such-job")
            pending = [fill_variables(e, job.id) for e in expressions(load_dashboard())]
            deadline = time.monotonic() + QUERY_DEADLINE_S
            while pending and time.monotonic() < deadline:
                client.get(job.id)  # a polling client, as `gradfleet submit --watch` is, gives gRPC traffic
                now = time.time()
                pending = [e for e in pending if not has_finite_value(prometheus.query_range(e, start, now))]
                time.sleep(0.5)
            up = prometheus.targets_up()
            assert pending == [], f"no data after {QUERY_DEADLINE_S} s (targets up: {up}): {pending}"
            job_ids = prometheus.api("label/job_id/values", **{"match[]": "gradfleet_job_steps_total"})
            assert job.id in job_ids
        finally:
            client.cancel(job.id)
            assert wait_for(client, job.id, timeout_s=60).state == pb.CANCELLED
