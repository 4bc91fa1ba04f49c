"""Server configuration: one frozen object, built from flags and environment in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

# Every knob, its default and why.
DEFAULT_PORT = 50051
DEFAULT_METRICS_PORT = 9095
DEFAULT_HOST = "127.0.0.1"  # loopback unless the operator opens it up explicitly
DEFAULT_STATE_DIR = Path("state")
DEFAULT_DATA_ROOT = Path("data")
DEFAULT_RPC_THREADS = 16  # WatchJob streams hold a thread each; see max_watch_streams
DEFAULT_MAX_RUNNING_JOBS = 1  # a 2-core machine trains one job at a time well
DEFAULT_MAX_QUEUED_JOBS = 1000
DEFAULT_MAX_WORKERS_PER_JOB = 64
DEFAULT_MAX_PARAMS = 50_000_000  # 200 MB of float32 weights
DEFAULT_METRICS_RETIRE_AFTER_S = 60.0  # a few scrape intervals, so dashboards see a job's final values
DEFAULT_WORKER_WAIT_S = 600.0  # how long a job waits for CPUs for its workers before it fails
DEFAULT_STEP_TIMEOUT_S = 120.0  # a step slower than this means a worker is stuck
DOWNLOAD_CHUNK_BYTES = 1 << 20  # well under gRPC's 4 MiB default message limit


@dataclass(frozen=True)
class ServerConfig:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT  # 0 picks a free port (tests)
    metrics_port: int = DEFAULT_METRICS_PORT  # 0 picks a free port; -1 disables the exporter
    ray_address: str | None = None  # None starts an embedded local Ray
    ray_num_cpus: int | None = None  # embedded Ray only; None = all cores
    data_root: Path = DEFAULT_DATA_ROOT
    state_dir: Path = DEFAULT_STATE_DIR
    rpc_threads: int = DEFAULT_RPC_THREADS
    max_running_jobs: int = DEFAULT_MAX_RUNNING_JOBS
    max_queued_jobs: int = DEFAULT_MAX_QUEUED_JOBS
    max_workers_per_job: int = DEFAULT_MAX_WORKERS_PER_JOB
    max_params: int = DEFAULT_MAX_PARAMS
    step_timeout_s: float = DEFAULT_STEP_TIMEOUT_S
    worker_wait_s: float = DEFAULT_WORKER_WAIT_S
    # With an autoscaler the cluster can grow, so a job bigger than today's cluster waits instead of failing.
    autoscaling: bool = False
    metrics_retire_after_s: float = DEFAULT_METRICS_RETIRE_AFTER_S  # per-job series outlive the job this long
    dataset_search: tuple[Path, ...] = field(
        default_factory=lambda: (Path("/usr/share/datasets/fashion-mnist"),)
    )


def _flag(value: object) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def config_from_env_and_flags(flags: dict, environ: dict | None = None) -> ServerConfig:
    """Build the config: explicit flags win, then GRADFLEET_* environment variables, then defaults.

    `flags` maps ServerConfig field names to values; None means "not given".
    """
    environ = os.environ if environ is None else environ
    values: dict = {}
    for name, kind in (
        ("host", str),
        ("port", int),
        ("metrics_port", int),
        ("ray_address", str),
        ("ray_num_cpus", int),
        ("data_root", Path),
        ("state_dir", Path),
        ("max_running_jobs", int),
        ("max_queued_jobs", int),
        ("metrics_retire_after_s", float),
        ("worker_wait_s", float),
        ("autoscaling", _flag),
    ):
        env_value = environ.get(f"GRADFLEET_{name.upper()}")
        if flags.get(name) is not None:
            values[name] = kind(flags[name])
        elif env_value:
            values[name] = kind(env_value)
    return ServerConfig(**values)
