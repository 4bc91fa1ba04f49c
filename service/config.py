"""Server configuration: one frozen object, built from flags and environment in one place."""

from __future__ import annotations

import math
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
# A stream (WatchJob, DownloadModel, Health/Watch) holds a thread; max_watch_streams leaves 32 for the rest.
DEFAULT_RPC_THREADS = 96
DEFAULT_MAX_WATCH_STREAMS = 64  # streams of every kind, all clients together (service/limits.py)
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
# Bytes of each float feature array of an npz file that SubmitJob reads for NaN and infinities
# (about 0.25 s compressed, 0.03 s stored); the rest is checked at load.
DEFAULT_NPZ_CHECK_BYTES = 64 << 20
DEFAULT_MAX_MESSAGE_BYTES = 16 << 20  # both directions; models are streamed in chunks (below)
MIN_MESSAGE_BYTES = 4096  # a job record with its spec takes a few hundred bytes to a few kB
DEFAULT_STEP_TIMEOUT_S = 120.0  # a step slower than this means a worker is stuck
DOWNLOAD_CHUNK_BYTES = 1 << 20  # at most; well under gRPC's 4 MiB default message limit
TOKENS_FILE_ENV = "GRADFLEET_TOKENS_FILE"  # tokens never go on a command line (ps shows them)
MAX_GRPC_MESSAGE_BYTES = 2**31 - 1  # gRPC keeps message limits in a C int
ENOUGH = float("inf")  # no upper bound

# (field, lowest, highest) allowed; start-up refuses anything outside, naming the flag.
_RANGES = (
    ("port", 0, MAX_PORT),
    ("metrics_port", -1, MAX_PORT),
    ("ray_num_cpus", 1, ENOUGH),
    ("rpc_threads", 1, ENOUGH),
    ("max_watch_streams", 1, ENOUGH),
    ("max_watch_streams_per_client", 1, ENOUGH),
    ("max_running_jobs", 1, ENOUGH),
    ("max_queued_jobs", 1, ENOUGH),
    ("max_workers_per_job", 1, ENOUGH),
    ("max_params", 1, ENOUGH),
    ("max_dataset_bytes", 1, ENOUGH),
    ("csv_check_bytes", 1, ENOUGH),
    ("npz_check_bytes", 1, ENOUGH),
    ("max_message_bytes", MIN_MESSAGE_BYTES, MAX_GRPC_MESSAGE_BYTES),
    # Seconds: a step needs some time; waiting and retiring may be immediate.
    ("step_timeout_s", 0.001, ENOUGH),
    ("worker_wait_s", 0, ENOUGH),
    ("metrics_retire_after_s", 0, ENOUGH),
)


def _allowed(low: float, high: float) -> str:
    return f"must be at least {low}" if high == ENOUGH else f"must be between {low} and {high}"


def env_variable(name: str) -> str:
    """The environment variable that sets field `name`."""
    return f"GRADFLEET_{name.upper()}"


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
    # None: the default, or --max-watch-streams if that is lower; a value given is checked against it.
    max_watch_streams_per_client: int | None = None
    max_running_jobs: int = DEFAULT_MAX_RUNNING_JOBS
    max_queued_jobs: int = DEFAULT_MAX_QUEUED_JOBS
    max_workers_per_job: int = DEFAULT_MAX_WORKERS_PER_JOB
    max_params: int = DEFAULT_MAX_PARAMS
    max_dataset_bytes: int = DEFAULT_MAX_DATASET_BYTES
    csv_check_bytes: int = DEFAULT_CSV_CHECK_BYTES
    npz_check_bytes: int = DEFAULT_NPZ_CHECK_BYTES
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

    # Fields whose value came from a GRADFLEET_* variable, so an error names the variable, not the flag.
    from_environment: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.max_watch_streams_per_client is None:
            per_client = min(DEFAULT_MAX_WATCH_STREAMS_PER_CLIENT, self.max_watch_streams)
            object.__setattr__(self, "max_watch_streams_per_client", per_client)
        for name, low, high in _RANGES:
            value = getattr(self, name)
            if value is None:  # ray_num_cpus: all cores
                continue
            if not math.isfinite(value):  # inf is no limit, and NaN compares false with everything
                raise ValueError(f"{self.option(name)}: got {value}; must be a finite number")
            if not low <= value <= high:
                raise ValueError(f"{self.option(name)}: got {value}; {_allowed(low, high)}")
        if self.max_watch_streams >= self.rpc_threads:
            raise ValueError(
                f"{self.option('max_watch_streams')} ({self.max_watch_streams}) must be below "
                f"{self.option('rpc_threads')} ({self.rpc_threads}): each stream (WatchJob, DownloadModel, "
                "Health/Watch) holds one of the RPC threads, so streams could take them all and starve "
                "every other call; raise --rpc-threads or lower --max-watch-streams"
            )
        if self.max_watch_streams_per_client > self.max_watch_streams:
            raise ValueError(
                f"{self.option('max_watch_streams_per_client')} ({self.max_watch_streams_per_client}) "
                f"must be at most {self.option('max_watch_streams')} ({self.max_watch_streams}): one client "
                "can never hold more streams than the whole server allows; lower "
                "--max-watch-streams-per-client or raise --max-watch-streams"
            )
        if self.metrics_port == self.port != 0:
            raise ValueError(
                f"{self.option('metrics_port')} and {self.option('port')} both name port {self.port}; gRPC "
                "and the metrics endpoint need one each: choose another --metrics-port, or -1 for no metrics"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together; give both or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key (client certificates need TLS)")

    def option(self, name: str) -> str:
        """How field `name` was set: its GRADFLEET_* variable if it came from there, else its flag."""
        return env_variable(name) if name in self.from_environment else "--" + name.replace("_", "-")

    @property
    def download_chunk_bytes(self) -> int:
        """DownloadModel's chunk size: 1 MiB, or half of max_message_bytes where that is less,
        leaving room for the chunk's offsets and gRPC's framing."""
        return min(DOWNLOAD_CHUNK_BYTES, self.max_message_bytes // 2)


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _flag(value: object) -> bool:
    text = str(value).strip().lower()
    if text not in _TRUE + _FALSE:
        raise ValueError(f"must be one of {', '.join(_TRUE + _FALSE)}")
    return text in _TRUE


def _whole_number(value: object) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError("must be a whole number") from None


def _number(value: object) -> float:
    try:
        return float(value)
    except ValueError:
        raise ValueError("must be a number") from None


def config_from_env_and_flags(flags: dict, environ: dict | None = None) -> ServerConfig:
    """Build the config: explicit flags win, then GRADFLEET_* environment variables, then defaults.

    `flags` maps ServerConfig field names to values; None means "not given". Every field but
    dataset_search can be set either way. ValueError names the flag or variable and what is allowed.
    """
    environ = os.environ if environ is None else environ
    values: dict = {}
    from_environment = set()
    for item in fields(ServerConfig):
        kind = _field_kind(item.type)
        if kind is None:
            continue
        env_value = environ.get(env_variable(item.name))
        if flags.get(item.name) is not None:
            values[item.name] = kind(flags[item.name])
        elif env_value:
            try:
                values[item.name] = kind(env_value)
            except ValueError as exc:
                raise ValueError(f"{env_variable(item.name)}: got {env_value!r}; {exc}") from None
            from_environment.add(item.name)
    return ServerConfig(**values, from_environment=frozenset(from_environment))


def _field_kind(annotation: str) -> type | None:
    """int, float, str or Path from a field's annotation text ("Path | None" -> Path)."""
    base = annotation.replace(" | None", "")
    return {"int": _whole_number, "float": _number, "str": str, "Path": Path, "bool": _flag}.get(base)
