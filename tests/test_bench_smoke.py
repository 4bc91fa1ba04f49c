"""Smoke runs of bench/e2e.py (`make bench`, a short grid), bench/tta.py and bench/recovery.py (their
--quick modes): each trains through a real coordinator and prints its figures (the full runs are for a
quiet machine, by hand)."""

from __future__ import annotations

import re

import pytest

from tests.helpers import run_bench

pytestmark = [pytest.mark.integration, pytest.mark.ray, pytest.mark.slow]
SPLIT = r"([\d.]+) / ([\d.]+) / ([\d.]+) / ([\d.]+)"
E2E_ROW = re.compile(
    rf"^\s+256  service, (\d) worker\(s\), (\d) micro-shards\s+([\d,]+)\s+([\d.]+)x  {SPLIT}$"
)


def test_e2e_prints_engine_and_service_rows(fashion_dir) -> None:
    """One batch size: the two engine rows and four service rows (1 and 2 workers, two shard counts),
    each with a positive rate and a step split whose compute time is positive."""
    out = run_bench("e2e.py", "--batches", "256", "--samples", "240000", "--repeats", "1")
    table = out.split("samples/s vs engine 2t")[-1]
    rows = [m for line in table.splitlines() if (m := E2E_ROW.match(line))]
    assert [(int(m[1]), int(m[2])) for m in rows] == [(1, 1), (1, 4), (2, 2), (2, 4)]
    assert all(int(m[3].replace(",", "")) > 0 and float(m[4]) > 0 and float(m[5]) > 0 for m in rows)
    assert re.search(r"^\s+256  engine, 1 process, 2 BLAS threads\s+[\d,]+\s+1\.00x", table, re.M)


def test_tta_quick_trains_the_service_and_the_engine_one_epoch(fashion_dir) -> None:
    """One epoch on 10,000 images: the service and the engine both report a best accuracy well above
    chance (0.1) and below 1 (sklearn and torch rows follow only where the bench extra is installed)."""
    row = r"^{name}\s+(never|[\d.]+ s)\s+after\s+1 epochs\s+best accuracy (0\.\d+)"
    out = run_bench("tta.py", "--quick")
    for name in ("gradfleet", "engine"):
        match = re.search(row.format(name=name), out, re.M)
        assert match, out
        assert 0.5 < float(match[2]) < 1.0, match[0]


def test_recovery_quick_measures_a_worker_kill_a_checkpoint_cost_and_a_restart(fashion_dir) -> None:
    out = run_bench("recovery.py", "--quick")
    seconds = re.search(r"^worker SIGKILL -> next applied step: ([\d.]+) s$", out, re.M)
    restart = re.search(r"^coordinator SIGKILL \+ restart -> next applied step: ([\d.]+) s", out, re.M)
    cost = re.search(r"^checkpoint cost: (-?[\d.]+)% of throughput$", out, re.M)
    assert seconds and restart and cost, out
    assert 0 < float(seconds[1]) < 60 and 0 < float(restart[1]) < 120, out
