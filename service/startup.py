"""Start-up checks run before anything is started: folders, the state-folder lock, and ports in use.

Each failure is a StartupError naming the value and the flag to change; `gradfleet serve` prints it and
exits 2.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from typing import TextIO

from prometheus_client import CollectorRegistry, start_http_server

log = logging.getLogger(__name__)

LOCK_FILE = "coordinator.lock"


class StartupError(OSError):
    """The coordinator cannot start with this configuration; the message says what to change."""


def check_folders(state_dir: Path, data_root: Path) -> None:
    """Refuse a --state-dir that is a file; warn about a --data-root that does not exist."""
    if state_dir.exists() and not state_dir.is_dir():
        raise StartupError(
            f"--state-dir {state_dir} is not a folder; choose a folder (it is created if missing)"
        )
    if data_root.exists() and not data_root.is_dir():
        raise StartupError(f"--data-root {data_root} is not a folder; choose the folder holding the datasets")
    if not data_root.exists():
        log.warning("--data-root %s does not exist: file datasets cannot be found until it does", data_root)


def lock_state_dir(state_dir: Path) -> TextIO:
    """Hold an exclusive lock on the state folder for the coordinator's life (close the file to release):
    two coordinators on one folder would both re-queue and run the same jobs."""
    state_dir.mkdir(parents=True, exist_ok=True)
    handle = open(state_dir / LOCK_FILE, "a+", encoding="utf-8")  # noqa: SIM115 (held until stop)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise StartupError(
            f"another coordinator is using {state_dir} (pid {holder}); stop it or choose another --state-dir"
        ) from None
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def start_metrics_http(host: str, port: int, registry: CollectorRegistry):
    """The Prometheus endpoint on `port` (0: any free); returns (server, bound port)."""
    try:
        http, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise StartupError(
            f"cannot serve metrics on {host}:{port} ({exc.strerror}); "
            "choose another --metrics-port, or -1 to turn metrics off"
        ) from None
    return http, http.server_address[1]


def grpc_port_error(address: str, reason: object) -> StartupError:
    return StartupError(
        f"cannot listen on {address} ({reason}); is another coordinator using it? choose another --port"
    )
