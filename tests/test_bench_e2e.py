"""A smoke run of bench/e2e.py (`make bench`): it trains through a real coordinator and prints its table."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.ray, pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent
SPLIT = r"([\d.]+) / ([\d.]+) / ([\d.]+) / ([\d.]+)"
ROW = re.compile(rf"^\s+256  service, (\d) worker\(s\), (\d) micro-shards\s+([\d,]+)\s+([\d.]+)x  {SPLIT}$")


def test_a_short_run_prints_engine_and_service_rows(fashion_dir) -> None:
    """One batch size: the two engine rows and four service rows (1 and 2 workers, two shard counts),
    each with a positive rate and a step split whose compute time is positive."""
    args = ["--batches", "256", "--samples", "240000", "--repeats", "1"]
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "e2e.py"), *args],
        cwd=ROOT,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    table = done.stdout.split("samples/s vs engine 2t")[-1]
    rows = [m for line in table.splitlines() if (m := ROW.match(line))]
    assert [(int(m[1]), int(m[2])) for m in rows] == [(1, 1), (1, 4), (2, 2), (2, 4)]
    assert all(int(m[3].replace(",", "")) > 0 and float(m[4]) > 0 and float(m[5]) > 0 for m in rows)
    assert re.search(r"^\s+256  engine, 1 process, 2 BLAS threads\s+[\d,]+\s+1\.00x", table, re.M)
