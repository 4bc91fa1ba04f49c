"""Server configuration: one frozen object, built from flags and environment in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

# Every knob, its default and why.
DEFAULT_PORT = 50051
DEFAULT_METRICS_PORT = 9095
MAX_PORT = 65535
DEFAULT_HOST = "127.0.0.1"  # loopback unless the operator opens it up explicitly
DEFAULT_STATE_DIR = Path("state")
DEFAULT_DATA_ROOT = Path("data")
DEFAULT_RPC_THREADS = 96  # a WatchJob stream holds a thread; max_watch_streams leaves 32 for the rest
DEFAULT_MAX_WATCH_STREAMS = 64  # all clients together
DEFAULT_MAX_WATCH_STREAMS_PER_CLIENT = 8  # per connection (gRPC peer)
DEFAULT_MAX_RUNNING_JOBS = 1  # a 2-core machine trains one job at a time well
DEFAULT_MAX_QUEUED_JOBS = 1000
DEFAULT_MAX_WORKERS_PER_JOB = 64
DEFAULT_MAX_PARAMS = 50_000_000  # 200 MB of float32 weights
DEFAULT_METRICS_RETIRE_AFTER_S = 60.0  # a few scrape intervals, so dashboards see a job's final values
DEFAULT_WORKER_WAIT_S = 600.0  # how long a job waits for CPUs for its workers before it fails
DEFAULT_MAX_DATASET_BYTES = 2 << 30  # arrays in memory; Fashion-MNIST needs 55 MB
# CSV files have no header: SubmitJob parses this much of one (about 0.4 s), the rest is checked at load.
DEFAULT_CSV_CHECK_BYTES = 4 << 20
DEFAULT_MAX_MESSAGE_BYTES = 16 << 20  # both directions; models are streamed in chunks (below)
MIN_MESSAGE_BYTES = 4096  # a job record with its spec takes a few hundred bytes to a few kB
DEFAULT_STEP_TIMEOUT_S = 120.0  # a step slower than this means a worker is stuck
DOWNLOAD_CHUNK_BYTES = 1 << 20  # at most; well under gRPC's 4 MiB default message limit
TOKENS_FILE_ENV = "GRADFLEET_TOKENS_FILE"  # tokens never go on a command line (ps shows them)


@dataclass(frozen=True)
class ServerConfig:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT  # 0 picks a free port (tests)
    metrics_port: int = DEFAULT_METRICS_PORT  # 0 picks a free port; -1 disables the exporter
    ray_address: str | None = None  # None starts an embedded local Ray
    ray_num_cpus: int | None = None  # embedded Ray only; None = all cores
    data_root: Path = DEFAULT_DATA_ROOT  # file dataset URIs must stay inside it
    state_dir: Path = DEFAULT_STATE_DIR
    rpc_threads: int = DEFAULT_RPC_THREADS
    max_watch_streams: int = DEFAULT_MAX_WATCH_STREAMS
    max_watch_streams_per_client: int = DEFAULT_MAX_WATCH_STREAMS_PER_CLIENT
    max_running_jobs: int = DEFAULT_MAX_RUNNING_JOBS
    max_queued_jobs: int = DEFAULT_MAX_QUEUED_JOBS
    max_workers_per_job: int = DEFAULT_MAX_WORKERS_PER_JOB
    max_params: int = DEFAULT_MAX_PARAMS
    max_dataset_bytes: int = DEFAULT_MAX_DATASET_BYTES
    csv_check_bytes: int = DEFAULT_CSV_CHECK_BYTES
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    step_timeout_s: float = DEFAULT_STEP_TIMEOUT_S
    worker_wait_s: float = DEFAULT_WORKER_WAIT_S
    # With an autoscaler the cluster can grow, so a job bigger than today's cluster waits instead of failing.
    autoscaling: bool = False
    metrics_retire_after_s: float = DEFAULT_METRICS_RETIRE_AFTER_S  # per-job series outlive the job this long
    dataset_search: tuple[Path, ...] = field(
        default_factory=lambda: (Path("/usr/share/datasets/fashion-mnist"),)
    )
    tls_cert: Path | None = None  # PEM certificate chain; with tls_key, the port speaks TLS only
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # PEM CA bundle; clients must then present a certificate it signed
    tokens_file: Path | None = None  # "token principal [admin]" lines; None: no authentication

    def __post_init__(self) -> None:
        for name in ("rpc_threads", "max_watch_streams", "max_watch_streams_per_client", "max_running_jobs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: got {getattr(self, name)}; must be at least 1")
        for name, low in (("port", 0), ("metrics_port", -1)):
            if not low <= getattr(self, name) <= MAX_PORT:
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"{flag}: got {getattr(self, name)}; must be between {low} and {MAX_PORT}")
        if self.max_message_bytes < MIN_MESSAGE_BYTES:
            raise ValueError(
                f"max_message_bytes: got {self.max_message_bytes}; must be at least {MIN_MESSAGE_BYTES}"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together; give both or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key (client certificates need TLS)")

    @property
    def download_chunk_bytes(self) -> int:
        """DownloadModel's chunk size: 1 MiB, or half of max_message_bytes where that is less,
        leaving room for the chunk's offsets and gRPC's framing."""
        return min(DOWNLOAD_CHUNK_BYTES, self.max_message_bytes // 2)


def _flag(value: object) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def config_from_env_and_flags(flags: dict, environ: dict | None = None) -> ServerConfig:
    """Build the config: explicit flags win, then GRADFLEET_* environment variables, then defaults.

    `flags` maps ServerConfig field names to values; None means "not given". Every field but
    dataset_search can be set either way.
    """
    environ = os.environ if environ is None else environ
    values: dict = {}
    for item in fields(ServerConfig):
        kind = _field_kind(item.type)
        if kind is None:
            continue
        env_value = environ.get(f"GRADFLEET_{item.name.upper()}")
        if flags.get(item.name) is not None:
            values[item.name] = kind(flags[item.name])
        elif env_value:
            values[item.name] = kind(env_value)
    return ServerConfig(**values)


def _field_kind(annotation: str) -> type | None:
    """int, float, str or Path from a field's annotation text ("Path | None" -> Path)."""
    base = annotation.replace(" | None", "")
    return {"int": int, "float": float, "str": str, "Path": Path, "bool": _flag}.get(base)
