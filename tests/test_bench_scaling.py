"""A smoke run of bench/scaling.py --quick: it trains through a real coordinator and prints its table."""

from __future__ import annotations

import re

import pytest

from tests.helpers import run_bench

pytestmark = [pytest.mark.integration, pytest.mark.ray, pytest.mark.slow]
ROW = re.compile(r"^one node\s+256\s+(\d)\s+([\d,]+)\s+([\d.]+)x\s+[\d.]+ / [\d.]+ / [\d.]+ / [\d.]+$")


def test_quick_run_prints_one_node_rows_for_1_and_2_workers(fashion_dir) -> None:
    """--quick prints a one-node row at batch 256 for 1 and 2 workers with a positive rate and all four
    phase times, the engine reference, and leaves out the two-node rows."""
    out = run_bench("scaling.py", "--quick", timeout_s=180)
    rows = [m for line in out.splitlines() if (m := ROW.match(line))]
    assert [int(m[1]) for m in rows] == [1, 2]
    assert all(int(m[2].replace(",", "")) > 0 and float(m[3]) > 0 for m in rows)
    assert "engine alone, 1 process, 2 BLAS threads, batch 256:" in out
    assert "two nodes" not in out.replace("--quick: two-node cluster rows left out", "")
