"""Smoke runs of bench/tta.py and bench/recovery.py in their --quick modes: each trains through a real
coordinator and prints its figures (the full runs are for a quiet machine, by hand)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.ray, pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(ROOT)}


def _quick(script: str) -> str:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--quick"],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def test_tta_quick_trains_the_service_and_the_engine_one_epoch(fashion_dir) -> None:
    """One epoch on 10,000 images: the service and the engine both report a best accuracy well above
    chance (0.1) and below 1 (sklearn and torch rows follow only where the bench extra is installed)."""
    row = r"^{name}\s+(never|[\d.]+ s)\s+after\s+1 epochs\s+best accuracy (0\.\d+)"
    out = _quick("tta.py")
    for name in ("gradfleet", "engine"):
        match = re.search(row.format(name=name), out, re.M)
        assert match, out
        assert 0.5 < float(match[2]) < 1.0, match[0]


def test_recovery_quick_measures_a_worker_kill_a_checkpoint_cost_and_a_restart(fashion_dir) -> None:
    out = _quick("recovery.py")
    seconds = re.search(r"^worker SIGKILL -> next applied step: ([\d.]+) s$", out, re.M)
    restart = re.search(r"^coordinator SIGKILL \+ restart -> next applied step: ([\d.]+) s", out, re.M)
    cost = re.search(r"^checkpoint cost: (-?[\d.]+)% of throughput$", out, re.M)
    assert seconds and restart and cost, out
    assert 0 < float(seconds[1]) < 60 and 0 < float(restart[1]) < 120, out
