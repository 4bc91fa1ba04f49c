"""Helpers shared by the integration tests."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from gradfleet.v1 import coordinator_pb2 as pb
from service.jobs import TERMINAL_STATES
from service.spec import spec_from_dict


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
