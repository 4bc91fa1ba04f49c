"""Helpers shared by the integration tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from gradfleet.v1 import coordinator_pb2 as pb
from service.client import CoordinatorClient
from service.config import DEFAULT_NPZ_CHECK_BYTES
from service.jobs import TERMINAL_STATES
from service.spec import spec_from_dict

ROOT = Path(__file__).resolve().parent.parent


def wait_for(client, job_id: str, states=TERMINAL_STATES, timeout_s: float = 240.0) -> pb.Job:
    """Poll until the job is in one of `states`; fail with the job's last record if it never is."""
    deadline = time.monotonic() + timeout_s
    while True:
        job = client.get(job_id)
        if job.state in states:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job never reached {states}: {job}")
        time.sleep(0.1)


def write_blobs(
    path: Path,
    n_train: int = 600,
    n_test: int = 200,
    features: int = 20,
    classes: int = 3,
    seed: int = 0,
) -> Path:
    """A small separable classification problem as an npz file."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, (classes, features))
    y = rng.integers(0, classes, n_train + n_test)
    x = (centers[y] + rng.normal(0, 1, (len(y), features))).astype(np.float32)
    np.savez(path, x_train=x[:n_train], y_train=y[:n_train], x_test=x[n_train:], y_test=y[n_train:])
    return path


def small_spec(uri: str, **overrides) -> pb.JobSpec:
    spec = {
        "name": "small",
        "dataset": {"uri": uri, "preprocessing": "STANDARDIZE"},
        "layers": [{"units": 16, "activation": "RELU"}, {"units": 3}],
        "optimizer": {"kind": "ADAM", "learningRate": 0.01},
        "batchSize": 50,
        "epochs": 2,
        "numWorkers": 2,
        "seed": 7,
        "microShards": 4,
    }
    spec.update(overrides)
    return spec_from_dict(spec)


def gradfleet_command(*args: str) -> list[str]:
    """The installed `gradfleet` console script (or the module if not installed)."""
    script = Path(sys.executable).with_name("gradfleet")
    return [*([str(script)] if script.exists() else [sys.executable, "-m", "service.cli"]), *args]


def run_bench(script: str, *args: str, timeout_s: float = 300) -> str:
    """Run bench/`script` with `args` on this tree (its own Ray) and return what it printed; the
    assertion on failure shows the end of its output."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        cwd=ROOT,
        env={**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def descendants(pid: int) -> list[int]:
    """Process ids below `pid` (Ray's head processes started by the coordinator), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class ServeProcess:
    """A `gradfleet serve` subprocess on a free loopback port."""

    def __init__(self, state_dir: Path, data_root: Path, log: Path) -> None:
        env = os.environ | {"PYTHONPATH": str(ROOT), "GRADFLEET_RAY_NUM_CPUS": "4"}
        env["RAY_AUTH_MODE"] = "disabled"
        args = [sys.executable, "-m", "service.cli", "serve", "--port", "0", "--metrics-port", "-1"]
        args += ["--state-dir", str(state_dir), "--data-root", str(data_root)]
        self.log = open(log, "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.log, env=env, cwd=ROOT)
        line = self.proc.stdout.readline().decode()
        assert "listening on" in line, f"the coordinator did not start; see {log}"
        self.address = line.split("listening on ")[1].split(",")[0].strip()
        self.client = CoordinatorClient(self.address)
        self.client.wait_ready(timeout=60)

    def stop(self, sig: int, timeout_s: float) -> float:
        """Send `sig`; wait for the exit; kill leftover children (Ray's head). Returns seconds to exit."""
        family = descendants(self.proc.pid)
        start = time.monotonic()
        self.proc.send_signal(sig)
        self.proc.wait(timeout=timeout_s)
        took = time.monotonic() - start
        self.client.close()
        time.sleep(1.0)  # let Ray's processes notice their driver is gone
        for pid in family:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.log.close()
        return took


def write_broken(path: Path, check_bytes: int = DEFAULT_NPZ_CHECK_BYTES) -> Path:
    """An npz that passes the submit-time checks (headers, labels, and the first `check_bytes` of its
    features, --npz-check-bytes) but whose last sample holds a NaN feature: a job on it is accepted,
    then fails when the full data is loaded (before any worker starts). Compressed, its 64 MiB of
    ones take 66 kB on disk."""
    features = 1000
    samples = check_bytes // (4 * features) + 8
    x = np.ones((samples, features), np.float32)
    x[-1, 3] = np.nan
    np.savez_compressed(path, x_train=x, y_train=np.arange(samples) % 3)
    return path


def model_weights(client, job_id: str, path: Path) -> dict[str, np.ndarray]:
    """The arrays of the job's downloaded model, without its spec."""
    client.download(job_id, path)
    with np.load(path, allow_pickle=False) as data:
        return {n: data[n] for n in data.files if n != "spec_json"}


_REFERENCE: dict[tuple[bytes, bytes], dict[str, np.ndarray]] = {}


def reference_weights(client, spec: pb.JobSpec, data_file: Path, folder: Path) -> dict[str, np.ndarray]:
    """The model of an uninterrupted run of `spec` on `data_file`, computed once per spec and data."""
    key = (spec.SerializeToString(deterministic=True), data_file.read_bytes())
    if key not in _REFERENCE:
        ref = pb.JobSpec()
        ref.CopyFrom(spec)
        ref.name = "reference"
        ref.ClearField("request_id")
        job = wait_for(client, client.submit(ref).id)
        assert job.state == pb.SUCCEEDED, job.message
        _REFERENCE[key] = model_weights(client, job.id, folder / "reference.npz")
    return _REFERENCE[key]


def assert_identical(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    """Two models hold the same arrays, bit for bit."""
    assert got.keys() == want.keys() and any(name.startswith("layer_") for name in got)
    for name in got:
        assert got[name].tobytes() == want[name].tobytes(), name
