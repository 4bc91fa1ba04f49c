"""deploy/secrets/make-secrets.sh makes what the deployments use to turn on TLS and tokens, and a real
coordinator started with its files serves TLS and refuses calls without the token."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import grpc
import pytest

from service.client import CoordinatorClient, TlsOptions
from tests.conftest import require

pytestmark = [pytest.mark.integration, pytest.mark.ray]
SCRIPT = Path(__file__).resolve().parent.parent / "deploy" / "secrets" / "make-secrets.sh"


def test_made_secrets_turn_on_tls_and_tokens(ray_session, tmp_path: Path) -> None:
    """Running the script twice keeps its files; a server on them accepts the admin token over TLS
    with the CA, and refuses a call without the token."""
    require(shutil.which("openssl") is not None, "openssl not installed")
    secrets = tmp_path / "secrets"
    subprocess.run(["sh", str(SCRIPT), str(secrets)], check=True, capture_output=True)
    token = (secrets / "admin.token").read_text().strip()
    subprocess.run(["sh", str(SCRIPT), str(secrets)], check=True, capture_output=True)
    assert (secrets / "admin.token").read_text().strip() == token  # idempotent: nothing rotated

    from service.config import ServerConfig
    from service.server import start_server

    config = ServerConfig(
        port=0,
        metrics_port=-1,
        state_dir=tmp_path / "state",
        data_root=tmp_path,
        tls_cert=secrets / "server.pem",
        tls_key=secrets / "server.key",
        tokens_file=secrets / "tokens",
    )
    running = start_server(config)
    try:
        address = f"localhost:{running.port}"
        tls = TlsOptions(ca=secrets / "ca.pem")
        with CoordinatorClient(address, tls=tls, token=token) as client:
            assert client.list() == []
        with CoordinatorClient(address, tls=tls) as anonymous, pytest.raises(grpc.RpcError) as refused:
            anonymous.list()
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        running.stop(grace_s=1.0)
