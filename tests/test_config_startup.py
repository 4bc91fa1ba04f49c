"""Start-up refuses a port or state folder another coordinator holds, and bad folders and ports, before
Ray starts; `gradfleet serve` then exits 2 with a message naming the value and the flag."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.client import CoordinatorClient
from service.startup import StartupError, host_port
from tests.conftest import start_coordinator
from tests.helpers import ROOT, gradfleet_command


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port held by a listening socket (no SO_REUSEPORT)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def serve(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled"}
    start = time.monotonic()
    done = subprocess.run(
        gradfleet_command("serve", *args), cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    return done, time.monotonic() - start


@pytest.mark.ray
def test_a_second_server_on_the_same_port_fails(coordinator, tmp_path: Path) -> None:
    """A coordinator on the port of a running one fails to start instead of sharing the port."""
    with pytest.raises(StartupError, match=f"cannot listen on 127.0.0.1:{coordinator.port} .*--port"):
        start_coordinator(tmp_path / "second", port=coordinator.port, metrics_port=-1)


@pytest.mark.ray
def test_a_second_server_on_the_same_state_folder_fails(coordinator) -> None:
    """A coordinator on the state folder of a running one is refused, naming the folder and its pid."""
    state_dir = coordinator.config.state_dir
    with pytest.raises(StartupError) as refused:
        start_coordinator(state_dir.parent, metrics_port=-1)
    assert str(refused.value) == (
        f"another coordinator is using {state_dir} (pid {os.getpid()}); stop it or choose another --state-dir"
    )


@pytest.mark.ray
def test_the_state_folder_is_free_again_after_stop(ray_session, tmp_path: Path) -> None:
    """Stopping a coordinator releases its state folder for the next one."""
    first = start_coordinator(tmp_path, metrics_port=-1)
    first.stop(grace_s=1.0)
    second = start_coordinator(tmp_path, metrics_port=-1)
    assert second.port > 0
    second.stop(grace_s=1.0)


def test_serve_on_a_busy_port_exits_2_before_starting_ray(busy_port: int, tmp_path: Path) -> None:
    """`gradfleet serve --port P` with P in use exits 2 within seconds, naming the address and --port."""
    done, took = serve("--port", str(busy_port), "--metrics-port", "-1", "--state-dir", str(tmp_path / "s"))
    assert done.returncode == 2, done.stderr
    assert f"error: cannot listen on 127.0.0.1:{busy_port}" in done.stderr
    assert "--port" in done.stderr
    assert took < 15  # Ray takes longer than that to start


def test_serve_on_a_busy_metrics_port_exits_2_naming_it(busy_port: int, tmp_path: Path) -> None:
    """`gradfleet serve --metrics-port P` with P in use exits 2, naming the port and --metrics-port."""
    done, took = serve("--port", "0", "--metrics-port", str(busy_port), "--state-dir", str(tmp_path / "s"))
    assert done.returncode == 2, done.stderr
    assert f"error: cannot serve metrics on 127.0.0.1:{busy_port} (Address already in use)" in done.stderr
    assert "--metrics-port" in done.stderr
    assert took < 15


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("--port", "99999"), "error: --port: got 99999; must be between 0 and 65535"),
        (("--state-dir", "FILE"), "error: --state-dir FILE is not a folder"),
        (("--data-root", "FILE"), "error: --data-root FILE is not a folder"),
        (
            ("--port", "54610", "--metrics-port", "54610"),
            "error: --metrics-port and --port both name port 54610; gRPC and the metrics endpoint need one",
        ),
        (
            ("--state-dir", "/proc/gradfleet-state"),
            "error: --state-dir /proc/gradfleet-state: cannot create or write in it (No such file",
        ),
    ],
    ids=["port-out-of-range", "state-dir-is-a-file", "data-root-is-a-file", "same-ports", "uncreatable"],
)
def test_serve_refuses_bad_ports_and_folders(tmp_path: Path, args: tuple[str, ...], error: str) -> None:
    """An out-of-range port, one port for both gRPC and metrics, or a state folder or data root that is a
    file or cannot be created, exits 2 with the reason, naming the flags."""
    file = tmp_path / "file"
    file.write_text("not a folder")
    args = tuple(str(file) if a == "FILE" else a for a in args)
    done, _ = serve("--metrics-port", "-1", "--state-dir", str(tmp_path / "s"), *args)
    assert done.returncode == 2, done.stderr
    assert error.replace("FILE", str(file)) in done.stderr


@pytest.mark.parametrize(
    ("host", "address"),
    [("::1", "[::1]:5"), ("[::1]", "[::1]:5"), ("::", "[::]:5"), ("127.0.0.1", "127.0.0.1:5"), ("h", "h:5")],
)
def test_ipv6_literals_are_bracketed_in_addresses(host: str, address: str) -> None:
    assert host_port(host, 5) == address


@pytest.mark.ray
def test_a_bare_ipv6_host_serves_grpc_and_metrics(ray_session, tmp_path: Path) -> None:
    """--host ::1 (no brackets) listens on IPv6 loopback for gRPC and metrics, and says so bracketed."""
    running = start_coordinator(tmp_path, host="::1")
    try:
        assert running.address == f"[::1]:{running.port}"
        with CoordinatorClient(running.address) as client:
            assert client.list() == []
        url = f"http://[::1]:{running.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as reply:
            assert b"gradfleet_grpc_requests_total" in reply.read()
    finally:
        running.stop(grace_s=1.0)


def test_a_corrupt_job_store_stops_start_up_naming_the_file(tmp_path: Path) -> None:
    """A jobs.sqlite3 that is not a database is a start-up error naming it, --state-dir and the way out."""
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / "jobs.sqlite3").write_bytes(b"not a db at all")
    with pytest.raises(StartupError) as refused:
        start_coordinator(tmp_path, metrics_port=-1)
    assert str(refused.value) == (
        f"the job store {state_dir / 'jobs.sqlite3'} is not a readable database (file is not a database); "
        "move it aside (the coordinator then starts with no jobs) or restore it from a backup, "
        "or choose another --state-dir"
    )
    assert (state_dir / "jobs.sqlite3").read_bytes() == b"not a db at all"  # left as it was


def test_serve_with_a_corrupt_job_store_exits_2(tmp_path: Path) -> None:
    """`gradfleet serve` on a corrupt job store exits 2 with the message, not a traceback."""
    state_dir = tmp_path / "s"
    state_dir.mkdir()
    (state_dir / "jobs.sqlite3").write_bytes(b"not a db at all")
    done, _ = serve("--port", "0", "--metrics-port", "-1", "--state-dir", str(state_dir))
    assert done.returncode == 2, done.stderr
    assert f"error: the job store {state_dir / 'jobs.sqlite3'} is not a readable database" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_embedded_ray_that_times_out_starting_is_started_once_more(monkeypatch, tmp_path: Path) -> None:
    """Ray gives its raylet, and its GCS, a fixed 30 s to come up and a busy machine sometimes needs
    more: the coordinator shuts the failed start down and tries once more; other errors, or a second
    timeout, reach the caller."""
    from service import ray_start
    from service.config import ServerConfig

    calls: list[str] = []
    outcomes: list[Exception | None] = []

    def fake_init(**kwargs) -> None:
        calls.append("init")
        if outcome := outcomes.pop(0):
            raise outcome

    monkeypatch.setattr(ray_start.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray_start.ray, "init", fake_init)
    monkeypatch.setattr(ray_start.ray, "shutdown", lambda: calls.append("shutdown"))
    config = ServerConfig(port=0, state_dir=tmp_path)
    timeout = Exception("The current node timed out during startup. This could happen because ...")

    outcomes[:] = [timeout, None]
    assert ray_start.init_ray(config) is True
    assert calls == ["init", "shutdown", "init"]

    calls.clear()
    gcs_timeout = RuntimeError("Timed out waiting for file /tmp/ray/session_x/gcs_server_port_1a2b")
    outcomes[:] = [gcs_timeout, None]
    assert ray_start.init_ray(config) is True
    assert calls == ["init", "shutdown", "init"]

    calls.clear()
    outcomes[:] = [timeout, timeout]
    with pytest.raises(Exception, match="timed out during startup"):
        ray_start.init_ray(config)
    assert calls == ["init", "shutdown", "init", "shutdown"]  # every failed start is cleaned up

    calls.clear()
    outcomes[:] = [RuntimeError("some other failure")]
    with pytest.raises(RuntimeError, match="some other failure"):
        ray_start.init_ray(config)
    assert calls == ["init", "shutdown"]
