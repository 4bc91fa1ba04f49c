"""gRPC's C core logs at ERROR in gradfleet unless the user says otherwise: a failed TLS handshake
gives the CLI's one-line error, not also gRPC's "I1204 ... Handshake failed" lines."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from tests.helpers import ROOT, gradfleet_command

HANDSHAKE_LOG = "Handshake failed"


@pytest.fixture
def plaintext_port() -> Iterator[int]:
    """A plaintext gRPC server (no services needed): a TLS client's handshake with it fails."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port
    server.stop(None)


def _list_over_tls(port: int, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"} | {"PYTHONPATH": str(ROOT)}
    command = gradfleet_command("list", "--server", f"127.0.0.1:{port}", "--tls")
    return subprocess.run(command, cwd=ROOT, env=environ | env, capture_output=True, text=True, timeout=60)


def test_a_failed_handshake_is_one_error_line_without_grpc_info_logs(plaintext_port: int) -> None:
    done = _list_over_tls(plaintext_port)
    assert done.returncode == 2, done.stderr
    assert HANDSHAKE_LOG not in done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: "), done.stderr


def test_a_grpc_verbosity_the_user_set_is_kept(plaintext_port: int) -> None:
    done = _list_over_tls(plaintext_port, GRPC_VERBOSITY="INFO")
    assert done.returncode == 2, done.stderr
    assert HANDSHAKE_LOG in done.stderr
