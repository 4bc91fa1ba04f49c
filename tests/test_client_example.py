"""examples/client.py, the README's Python-client example, against a real coordinator."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import json_format

from tests.helpers import ROOT, small_spec, write_blobs

pytestmark = [pytest.mark.integration, pytest.mark.ray]


def _example(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "examples/client.py", *argv],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.fixture
def job_file(coordinator, tmp_path: Path) -> Path:
    """A small job file on blobs in the coordinator's data root."""
    write_blobs(coordinator.config.data_root / "blobs.npz")
    path = tmp_path / "job.json"
    path.write_text(json_format.MessageToJson(small_spec("npz:blobs.npz")))
    return path


def test_the_client_example_reports_errors_in_one_line_and_exits_2(coordinator, job_file: Path) -> None:
    """A bad --set, a spec the coordinator refuses and an unreachable server: one `error:` line each
    (the field or the status), exit 2, no traceback."""
    server = ["--server", coordinator.address]
    cases = [
        ([str(job_file), *server, "--set", "epochs=abc"], 'error: epochs: got "abc"; must be a whole number'),
        ([str(job_file), *server, "--set", "num_workers=65"], "error: INVALID_ARGUMENT: num_workers: got 65"),
        ([str(job_file), "--server", "127.0.0.1:1"], "error: UNAVAILABLE: "),
    ]
    for argv, start in cases:
        done = _example(*argv)
        assert (done.returncode, done.stdout) == (2, ""), done.stderr
        assert done.stderr.startswith(start) and len(done.stderr.splitlines()) == 1, done.stderr


def test_the_client_example_submits_follows_and_downloads(
    coordinator, job_file: Path, tmp_path: Path
) -> None:
    model = tmp_path / "model.npz"
    argv = [str(job_file), "--server", coordinator.address, "--set", "epochs=2", "-o", str(model)]
    done = _example(*argv)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert re.fullmatch(r"submitted job \w+", lines[0])
    accuracies = [
        float(m[1]) for line in lines if (m := re.fullmatch(r"epoch \d: test accuracy (\S+)", line))
    ]
    assert len(accuracies) == 2 and accuracies[-1] > 0.9  # three well-separated blobs
    assert re.fullmatch(r"job \w+ SUCCEEDED.*", lines[-2])
    assert lines[-1] == f"model: {model} ({model.stat().st_size:,} bytes)"
    with np.load(model) as weights:
        assert weights["layer_0_weight"].shape == (20, 16)
