"""A smoke run of bench/scaling.py --quick: it trains through a real coordinator and prints its table."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.ray, pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent
ROW = re.compile(r"^one node\s+256\s+(\d)\s+([\d,]+)\s+([\d.]+)x\s+[\d.]+ / [\d.]+ / [\d.]+ / [\d.]+$")


def test_quick_run_prints_one_node_rows_for_1_and_2_workers(fashion_dir) -> None:
    """--quick prints a one-node row at batch 256 for 1 and 2 workers with a positive rate and all four
    phase times, the engine reference, and leaves out the two-node rows."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "scaling.py"), "--quick"],
        cwd=ROOT,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    rows = [m for line in done.stdout.splitlines() if (m := ROW.match(line))]
    assert [int(m[1]) for m in rows] == [1, 2]
    assert all(int(m[2].replace(",", "")) > 0 and float(m[3]) > 0 for m in rows)
    assert "engine alone, 1 process, 2 BLAS threads, batch 256:" in done.stdout
    assert "two nodes" not in done.stdout.replace("--quick: two-node cluster rows left out", "")
