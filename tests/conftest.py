"""Shared fixtures: one real local Ray per test session, real coordinators on loopback ports."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
IN_CI = os.environ.get("CI", "").lower() == "true"


def require(condition: bool, reason: str) -> None:
    """Skip locally when a tool or file is missing; fail under CI, where .ci/run installs it."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"{reason} (CI must provide it: see .ci/run)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """A local Ray with 4 logical CPUs (tests run up to 3 workers on 2 cores), started once."""
    import ray

    from service.ray_start import set_embedded_ray_environment

    set_embedded_ray_environment()  # the coordinator's own settings for a Ray it starts

    # address="local": always a fresh instance, never a cluster someone else started with `ray start`
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def fashion_dir() -> Path:
    require((FASHION_DIR / "train-images-idx3-ubyte.gz").exists(), f"Fashion-MNIST not in {FASHION_DIR}")
    return FASHION_DIR


def start_coordinator(folder: Path, **overrides):
    """A real coordinator on free loopback ports with state and data under `folder`; `overrides`
    are ServerConfig fields. The caller stops it."""
    from service.config import ServerConfig
    from service.server import start_server

    data_root = folder / "data"
    data_root.mkdir(parents=True, exist_ok=True)
    values = {"port": 0, "metrics_port": 0, "state_dir": folder / "state", "data_root": data_root}
    return start_server(ServerConfig(**(values | overrides)))


@pytest.fixture
def coordinator(ray_session, tmp_path) -> Iterator:
    """A real coordinator: gRPC and metrics on free loopback ports, state in a temporary folder."""
    running = start_coordinator(tmp_path)
    yield running
    running.stop(grace_s=1.0)


@pytest.fixture
def client(coordinator) -> Iterator:
    from service.client import CoordinatorClient

    with CoordinatorClient(coordinator.address) as c:
        yield c
