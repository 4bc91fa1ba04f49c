"""`gradfleet serve` refuses a bad configuration before Ray starts, with exit 2 and a message naming the
flag (or GRADFLEET_* variable), what is wrong and what is allowed: limits out of range, watch streams
that could take every RPC thread, TLS files that are missing, not PEM or mismatched, a listen address
that is not this machine's, an unreadable tokens file, and a Ray address where nothing answers."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from service.config import config_from_env_and_flags
from service.startup import StartupError, check_host, check_ray_address, check_tls_files
from tests.conftest import require, start_coordinator
from tests.helpers import ROOT, gradfleet_command

try:
    from tests.tls import TestCA
except ImportError:  # the cryptography package is a dev extra
    TestCA = None

TEST_NET = "192.0.2.1"  # RFC 5737 documentation range: never an address of this machine


def serve(*args: str, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, float]:
    environ = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled", **(env or {})}
    start = time.monotonic()
    done = subprocess.run(
        gradfleet_command("serve", "--port", "0", "--metrics-port", "-1", *args),
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done, time.monotonic() - start


def closed_port() -> int:
    """A loopback port nothing listens on (bound once, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def pki(tmp_path: Path) -> dict:
    require(TestCA is not None, "the cryptography package is not installed (pip install -e '.[dev]')")
    ca = TestCA(tmp_path, "ca")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    return {"ca": ca, "server": ca.issue("server"), "other": ca.issue("other"), "garbage": garbage}


# ---------------------------------------------------------------------------------------------
# Limits and their ranges


@pytest.mark.parametrize(
    ("flags", "environ", "error"),
    [
        ({"max_params": -1}, {}, "--max-params: got -1; must be at least 1"),
        ({"max_workers_per_job": 0}, {}, "--max-workers-per-job: got 0; must be at least 1"),
        ({"max_queued_jobs": 0}, {}, "--max-queued-jobs: got 0; must be at least 1"),
        ({"max_running_jobs": 0}, {}, "--max-running-jobs: got 0; must be at least 1"),
        ({"max_dataset_bytes": 0}, {}, "--max-dataset-bytes: got 0; must be at least 1"),
        ({"csv_check_bytes": 0}, {}, "--csv-check-bytes: got 0; must be at least 1"),
        ({"npz_check_bytes": 0}, {}, "--npz-check-bytes: got 0; must be at least 1"),
        ({}, {"GRADFLEET_NPZ_CHECK_BYTES": "-5"}, "GRADFLEET_NPZ_CHECK_BYTES: got -5; must be at least 1"),
        ({"max_message_bytes": 2**31}, {}, "--max-message-bytes: got 2147483648; must be between 4096 and"),
        (
            {"max_watch_streams_per_client": 0},
            {},
            "--max-watch-streams-per-client: got 0; must be at least 1",
        ),
        ({}, {"GRADFLEET_MAX_RUNNING_JOBS": "0"}, "GRADFLEET_MAX_RUNNING_JOBS: got 0; must be at least 1"),
        ({}, {"GRADFLEET_STEP_TIMEOUT_S": "0"}, "GRADFLEET_STEP_TIMEOUT_S: got 0.0; must be at least 0.001"),
        ({}, {"GRADFLEET_WORKER_WAIT_S": "-1"}, "GRADFLEET_WORKER_WAIT_S: got -1.0; must be at least 0"),
        ({}, {"GRADFLEET_WORKER_WAIT_S": "nan"}, "GRADFLEET_WORKER_WAIT_S: got nan; must be a finite number"),
        ({}, {"GRADFLEET_RAY_NUM_CPUS": "0"}, "GRADFLEET_RAY_NUM_CPUS: got 0; must be at least 1"),
        ({}, {"GRADFLEET_WORKER_WAIT_S": "abc"}, "GRADFLEET_WORKER_WAIT_S: got 'abc'; must be a number"),
        ({}, {"GRADFLEET_RPC_THREADS": "many"}, "GRADFLEET_RPC_THREADS: got 'many'; must be a whole number"),
        (
            {},
            {"GRADFLEET_AUTOSCALING": "maybe"},
            "GRADFLEET_AUTOSCALING: got 'maybe'; must be one of 1, true",
        ),
    ],
)
def test_a_limit_out_of_range_names_its_flag_or_variable(flags: dict, environ: dict, error: str) -> None:
    """Each limit outside its range, or a variable that is not a number, names where it came from."""
    with pytest.raises(ValueError) as refused:
        config_from_env_and_flags(flags, environ)
    assert str(refused.value).startswith(error)


@pytest.mark.parametrize(
    ("flags", "environ", "names"),
    [
        ({"rpc_threads": 2, "max_watch_streams": 2}, {}, ("--max-watch-streams (2)", "--rpc-threads (2)")),
        ({}, {"GRADFLEET_RPC_THREADS": "2"}, ("--max-watch-streams (64)", "GRADFLEET_RPC_THREADS (2)")),
    ],
)
def test_watch_streams_must_leave_rpc_threads_free(flags: dict, environ: dict, names: tuple) -> None:
    """--max-watch-streams at or above --rpc-threads is refused: streams would starve every other call."""
    with pytest.raises(ValueError) as refused:
        config_from_env_and_flags(flags, environ)
    assert str(refused.value).startswith(f"{names[0]} must be below {names[1]}")
    assert "raise --rpc-threads or lower --max-watch-streams" in str(refused.value)


@pytest.mark.parametrize(
    ("flags", "environ", "names"),
    [
        ({"max_watch_streams_per_client": 100}, {},
         ("--max-watch-streams-per-client (100)", "--max-watch-streams (64)")),
        ({"max_watch_streams_per_client": 8}, {"GRADFLEET_MAX_WATCH_STREAMS": "4"},
         ("--max-watch-streams-per-client (8)", "GRADFLEET_MAX_WATCH_STREAMS (4)")),
    ],
)  # fmt: skip
def test_watch_streams_per_client_must_not_exceed_the_total(flags: dict, environ: dict, names: tuple) -> None:
    """--max-watch-streams-per-client above --max-watch-streams is refused: it could never be reached."""
    with pytest.raises(ValueError) as refused:
        config_from_env_and_flags(flags, environ)
    assert str(refused.value).startswith(f"{names[0]} must be at most {names[1]}")
    config_from_env_and_flags({"max_watch_streams_per_client": 64}, {})  # equal is fine
    # Left out, the per-client limit is the default (8) or the total if that is lower.
    assert config_from_env_and_flags({"max_watch_streams": 4}, {}).max_watch_streams_per_client == 4
    assert config_from_env_and_flags({}, {}).max_watch_streams_per_client == 8


def test_serve_refuses_nonsense_limits_and_too_few_threads(tmp_path: Path) -> None:
    """`serve --max-params -1`, `--rpc-threads 2` (64 watch streams) and a non-number in the
    environment each exit 2 within seconds, naming the flag or variable."""
    state = ("--state-dir", str(tmp_path / "s"))
    for args, env, error in [
        (
            ("--max-params", "-1"),
            {},
            "error: --max-params: got -1; must be at least 1",
        ),
        (("--rpc-threads", "2"), {}, "error: --max-watch-streams (64) must be below --rpc-threads (2)"),
        (
            ("--max-watch-streams-per-client", "100"),
            {},
            "error: --max-watch-streams-per-client (100) must be at most --max-watch-streams (64)",
        ),
        (
            (),
            {"GRADFLEET_WORKER_WAIT_S": "abc"},
            "error: GRADFLEET_WORKER_WAIT_S: got 'abc'; must be a number",
        ),
    ]:
        done, took = serve(*state, *args, env=env)
        assert done.returncode == 2, done.stderr
        assert error in done.stderr
        assert took < 15  # Ray takes longer than that to start


# ---------------------------------------------------------------------------------------------
# Listen address, TLS files, tokens file, Ray address


@pytest.mark.parametrize(
    ("host", "fragment"),
    [("999.1.1.1", "is not a valid address"), (TEST_NET, "is not an address of this machine")],
)
def test_a_host_that_is_not_this_machines_is_refused(host: str, fragment: str) -> None:
    """A malformed --host, or one of another machine, is named as such (not as a busy --port)."""
    with pytest.raises(StartupError, match=f"--host: '{host}' {fragment}"):
        check_host(host)


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0", "localhost", "[::1]"])
def test_local_hosts_are_accepted(host: str) -> None:
    """Loopback, every interface, a local name and a bracketed IPv6 address pass."""
    if host == "[::1]" and not socket.has_ipv6:
        pytest.skip("no IPv6")
    check_host(host)


def test_serve_names_a_host_from_the_environment(tmp_path: Path) -> None:
    """`GRADFLEET_HOST=999.1.1.1 gradfleet serve` exits 2 naming the variable, before Ray starts."""
    done, took = serve("--state-dir", str(tmp_path / "s"), env={"GRADFLEET_HOST": "999.1.1.1"})
    assert done.returncode == 2, done.stderr
    assert "error: GRADFLEET_HOST: '999.1.1.1' is not a valid address" in done.stderr
    assert "cannot listen" not in done.stderr and took < 15


def test_tls_files_that_are_missing_garbage_or_mismatched_are_named(pki: dict) -> None:
    """A missing file, a non-PEM certificate or client CA, and a key of another certificate are each
    refused naming the flag and the file."""
    server, other, garbage = pki["server"], pki["other"], pki["garbage"]
    missing = garbage.with_name("missing.pem")
    folder = garbage.parent
    cases = [
        ((server.cert, folder, None), f"--tls-key {folder}: is a folder, not a file"),
        ((folder, server.key, None), f"--tls-cert {folder}: is a folder, not a file"),
        ((server.cert, server.key, folder), f"--tls-client-ca {folder}: is a folder, not a file"),
        ((missing, server.key, None), f"--tls-cert {missing}: no such file"),
        ((server.cert, missing, None), f"--tls-key {missing}: no such file"),
        ((garbage, server.key, None), f"--tls-cert {garbage}: not a PEM certificate"),
        ((server.cert, garbage, None), f"--tls-key {garbage}: not a PEM private key"),
        (
            (server.cert, other.key, None),
            f"--tls-key {other.key} does not match the certificate in --tls-cert",
        ),
        ((server.cert, server.key, garbage), f"--tls-client-ca {garbage}: not a PEM CA certificate"),
    ]
    for files, error in cases:
        with pytest.raises(StartupError) as refused:
            check_tls_files(*files)
        assert str(refused.value).startswith(error), files
    check_tls_files(server.cert, server.key, pki["ca"].cert)  # the right files pass


def test_serve_with_a_mismatched_key_or_missing_tokens_file_exits_2(tmp_path: Path, pki: dict) -> None:
    """`serve` with a key of another certificate, a garbage certificate, or a tokens file that does
    not exist says so (not "cannot listen ... choose another --port") and exits 2 before Ray starts."""
    state = ("--state-dir", str(tmp_path / "s"))
    server, other, garbage = pki["server"], pki["other"], pki["garbage"]
    for args, error in [
        (("--tls-cert", str(server.cert), "--tls-key", str(other.key)), "does not match the certificate"),
        (("--tls-cert", str(garbage), "--tls-key", str(server.key)), "not a PEM certificate"),
        (("--tokens-file", str(tmp_path / "none")), f"error: --tokens-file {tmp_path / 'none'}: cannot read"),
        (("--tokens-file", str(tmp_path)), f"error: --tokens-file {tmp_path}: is a folder, not a file"),
    ]:
        done, took = serve(*state, *args)
        assert done.returncode == 2, done.stderr
        assert error in done.stderr and "cannot listen" not in done.stderr
        assert took < 15


def test_a_ray_address_where_nothing_answers_is_refused() -> None:
    """HOST:PORT with nothing listening is refused at once; other forms are left to Ray."""
    port = closed_port()
    with pytest.raises(StartupError, match=f"--ray-address 127.0.0.1:{port}: nothing answers there"):
        check_ray_address(f"127.0.0.1:{port}")
    for left_to_ray in ("auto", "local", f"ray://127.0.0.1:{port}"):
        check_ray_address(left_to_ray)


def test_a_ray_address_where_something_else_listens_is_refused() -> None:
    """A port held by something that is not a gRPC server (here a bare HTTP/1 server), where Ray
    would retry forever, is refused within seconds."""
    import http.server
    import threading

    http_server = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=http_server.serve_forever, daemon=True).start()
    address = f"127.0.0.1:{http_server.server_port}"
    try:
        with pytest.raises(StartupError, match=f"--ray-address {address}: something listens there"):
            check_ray_address(address)
    finally:
        http_server.shutdown()
        http_server.server_close()


def test_a_ray_address_of_a_real_head_passes(ray_session) -> None:
    import ray

    gcs = ray.get_runtime_context().gcs_address
    check_ray_address(gcs)


def test_serve_with_an_unreachable_ray_address_exits_2(tmp_path: Path) -> None:
    """`serve --ray-address 127.0.0.1:PORT` with nothing there exits 2 within seconds naming the
    flag and what to check, where Ray alone retries forever."""
    port = closed_port()
    done, took = serve("--state-dir", str(tmp_path / "s"), "--ray-address", f"127.0.0.1:{port}")
    assert done.returncode == 2, done.stderr
    assert f"error: --ray-address 127.0.0.1:{port}: nothing answers there" in done.stderr
    assert "`ray start --head`" in done.stderr and took < 15


@pytest.mark.ray
def test_the_start_up_line_says_client_certificates_are_required(ray_session, tmp_path, pki, caplog) -> None:
    """With --tls-client-ca the start-up log line says client certificates are required."""
    caplog.set_level(logging.INFO, logger="service.server")
    running = start_coordinator(
        tmp_path,
        metrics_port=-1,
        tls_cert=pki["server"].cert,
        tls_key=pki["server"].key,
        tls_client_ca=pki["ca"].cert,
    )
    running.stop(grace_s=1.0)
    lines = [r.getMessage() for r in caplog.records if "gradfleet coordinator on" in r.getMessage()]
    assert len(lines) == 1 and "(TLS, client certificates required, no authentication)" in lines[0]
