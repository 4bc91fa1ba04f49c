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


def _make(secrets: Path, names: str) -> subprocess.CompletedProcess:
    require(shutil.which("openssl") is not None, "openssl not installed")
    return subprocess.run(["sh", str(SCRIPT), str(secrets), names], capture_output=True, text=True)


def _verify(secrets: Path, *check: str) -> subprocess.CompletedProcess:
    """openssl's own check of server.pem against the CA for a host name or IP address."""
    command = ["openssl", "verify", "-CAfile", str(secrets / "ca.pem"), *check, str(secrets / "server.pem")]
    return subprocess.run(command, capture_output=True, text=True)


def test_addresses_become_ip_entries_and_names_dns_entries(tmp_path: Path) -> None:
    """IPv4 and IPv6 addresses go into IP: entries, which TLS clients dialing them check; host names
    into DNS: entries; 127.0.0.1 is added once."""
    secrets = tmp_path / "secrets"
    made = _make(secrets, "127.0.0.2,::1,2001:db8::ffff:10.0.0.1,gradfleet.example.com,127.0.0.1")
    assert made.returncode == 0, made.stderr
    text = subprocess.run(
        ["openssl", "x509", "-noout", "-text", "-in", str(secrets / "server.pem")],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "IP Address:127.0.0.2" in text and "DNS:127.0.0.2" not in text
    assert "DNS:gradfleet.example.com" in text and text.count("IP Address:127.0.0.1") == 1
    for address in ("127.0.0.2", "::1", "2001:db8::ffff:10.0.0.1", "127.0.0.1"):
        assert _verify(secrets, "-verify_ip", address).returncode == 0, address
    assert _verify(secrets, "-verify_hostname", "gradfleet.example.com").returncode == 0
    assert _verify(secrets, "-verify_ip", "127.0.0.3").returncode != 0  # the check is real


@pytest.mark.parametrize(
    ("names", "quoted"),
    [
        ("coordinator,bad name", '"bad name"'),
        ("coordinator,,localhost", "an empty name"),
        ("999.1.1.1", '"999.1.1.1"'),
        ("1::2::3", '"1::2::3"'),
        ("-leading-hyphen", '"-leading-hyphen"'),
        ("under_score", '"under_score"'),
    ],
)
def test_a_name_that_is_no_host_name_or_address_is_refused(tmp_path: Path, names: str, quoted: str) -> None:
    """Each bad SERVER_NAMES entry is refused naming it, before any file is made."""
    secrets = tmp_path / "secrets"
    made = _make(secrets, names)
    assert made.returncode == 2
    assert f"SERVER_NAMES: {quoted} is neither a host name" in made.stderr
    assert not secrets.exists()
