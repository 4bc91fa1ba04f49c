"""Start-up checks run before anything is started: the listen address, TLS files, the Ray cluster's
address, folders, the state-folder lock, and ports in use.

Each failure is a StartupError naming the value and the flag to change; `gradfleet serve` prints it and
exits 2.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import ssl
from pathlib import Path
from typing import TextIO

from prometheus_client import CollectorRegistry, start_http_server

from service.auth import TokenTable

log = logging.getLogger(__name__)

LOCK_FILE = "coordinator.lock"
RAY_ADDRESS_CHECK_S = 5.0  # a reachable head answers a TCP connect in milliseconds


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
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        handle = open(state_dir / LOCK_FILE, "a+", encoding="utf-8")  # noqa: SIM115 (held until stop)
    except OSError as exc:
        raise StartupError(
            f"--state-dir {state_dir}: cannot create or write in it ({exc.strerror}); choose a folder "
            "this user can write (it is created if missing)"
        ) from None
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


def bare_host(host: str) -> str:
    """The host without the brackets of an IPv6 literal: "[::1]" -> "::1" (what sockets take)."""
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def host_port(host: str, port: int) -> str:
    """HOST:PORT as gRPC and URLs take it: an IPv6 literal in brackets ("[::1]:50051")."""
    name = bare_host(host)
    return f"[{name}]:{port}" if ":" in name else f"{name}:{port}"


def start_metrics_http(host: str, port: int, registry: CollectorRegistry):
    """The Prometheus endpoint on `port` (0: any free); returns (server, bound port)."""
    try:
        http, _thread = start_http_server(port, addr=bare_host(host), registry=registry)
    except OSError as exc:
        raise StartupError(
            f"cannot serve metrics on {host_port(host, port)} ({exc.strerror}); "
            "choose another --metrics-port, or -1 to turn metrics off"
        ) from None
    return http, http.server_address[1]


def grpc_port_error(address: str, reason: object) -> StartupError:
    return StartupError(
        f"cannot listen on {address} ({reason}); is another coordinator using it? choose another --port"
    )


def check_host(host: str, option: str = "--host") -> None:
    """Refuse a listen address that is malformed or not one of this machine's (gRPC would only say
    "Failed to bind"); `option` is how the operator set it."""
    try:
        candidates = socket.getaddrinfo(bare_host(host), 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        raise StartupError(
            f"{option}: {host!r} is not a valid address nor a name this machine resolves; "
            "give one of its addresses, e.g. 127.0.0.1 (loopback) or 0.0.0.0 (every interface)"
        ) from None
    for family, kind, proto, _, address in candidates:
        with socket.socket(family, kind, proto) as probe:
            try:
                probe.bind(address)
                return
            except OSError:
                continue
    raise StartupError(
        f"{option}: {host!r} is not an address of this machine (`ip addr` lists them); "
        "give one of its addresses, e.g. 127.0.0.1 (loopback) or 0.0.0.0 (every interface)"
    )


def check_tls_files(cert: Path | None, key: Path | None, client_ca: Path | None) -> None:
    """Refuse unreadable, non-PEM or mismatched TLS files, naming the flag (gRPC would only fail the bind)."""
    for flag, path in (("--tls-cert", cert), ("--tls-key", key), ("--tls-client-ca", client_ca)):
        if path is not None and path.is_dir():
            raise StartupError(f"{flag} {path}: is a folder, not a file; give the path of a PEM file")
        if path is not None and not path.is_file():
            raise StartupError(f"{flag} {path}: no such file; give the path of a PEM file")
    if cert is None or key is None:
        return
    _check_certificates("--tls-cert", cert, "a PEM certificate (chain)")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise StartupError(
                f"--tls-key {key} does not match the certificate in --tls-cert {cert}; "
                "give the private key that certificate was issued for"
            ) from None
        raise StartupError(
            f"--tls-key {key}: not a PEM private key ({exc.reason or exc}); give the unencrypted key "
            "of --tls-cert"
        ) from None
    if client_ca is not None:
        _check_certificates("--tls-client-ca", client_ca, "a PEM CA certificate (bundle)")


def _check_certificates(flag: str, path: Path, what: str) -> None:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        raise StartupError(f"{flag} {path}: not {what} ({exc.reason or exc})") from None


def _no_password() -> bytes:
    return b""  # an encrypted key then fails to load instead of prompting on the terminal


def check_ray_address(address: str, option: str = "--ray-address") -> None:
    """Refuse a HOST:PORT Ray address where nothing answers: Ray itself would retry forever.
    "auto", "local" and URL forms (ray://...) are left to Ray."""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return
    host = bare_host(host)
    advice = (
        "check that the Ray head is running (`ray start --head` prints its address, port 6379 by "
        "default) and that this machine can reach it, or leave --ray-address out to start an embedded Ray"
    )
    try:
        socket.create_connection((host, int(port)), timeout=RAY_ADDRESS_CHECK_S).close()
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise StartupError(f"{option} {address}: nothing answers there ({reason}); {advice}") from None
    if os.environ.get("RAY_USE_TLS", "0").lower() in ("0", "false", ""):
        _check_grpc_answers(address, option, advice)


def _check_grpc_answers(address: str, option: str, advice: str) -> None:
    """Ray's GCS is a gRPC server: something else on the port (Ray would retry it forever) never
    completes a gRPC connection."""
    import grpc  # only here: the rest of this module runs before any gRPC is needed

    with grpc.insecure_channel(address) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=RAY_ADDRESS_CHECK_S)
        except grpc.FutureTimeoutError:
            raise StartupError(
                f"{option} {address}: something listens there but no gRPC server answers, so it is not a "
                f"Ray head's GCS; {advice}"
            ) from None


def load_tokens(path: Path, option: str = "--tokens-file") -> TokenTable:
    """The token table of `path`; a file that cannot be read names the option (a bad line: ValueError)."""
    if path.is_dir():
        raise StartupError(
            f"{option} {path}: is a folder, not a file; give a readable file of "
            "`token principal [admin]` lines"
        )
    try:
        return TokenTable(path)
    except OSError as exc:
        raise StartupError(
            f"{option} {path}: cannot read it ({exc.strerror}); give a readable file of "
            "`token principal [admin]` lines"
        ) from None
