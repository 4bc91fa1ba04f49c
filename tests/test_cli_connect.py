"""Client connection options on the command line: bad TLS and token files, and TLS mismatches."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from service import cli
from service.cli_connect import check_port, format_rpc_error
from service.client import CoordinatorClient, TlsOptions
from service.spec import load_spec_file
from tests.helpers import ROOT
from tests.tls import TestCA

EXAMPLES = ROOT / "examples"


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path, "ca")


@pytest.fixture
def tls_server(ca: TestCA) -> Iterator[str]:
    """A bare gRPC server that speaks only TLS (no coordinator needed: the handshake is the test)."""
    issued = ca.issue("server")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    credentials = grpc.ssl_server_credentials([(issued.key.read_bytes(), issued.cert.read_bytes())])
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None)


@pytest.fixture
def plain_server() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None)


def _run(capsys, *argv: str) -> tuple[int, str]:
    code = cli.main(["list", "--server", "127.0.0.1:1", *argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err.strip()


CERT, KEY = "--cert (or GRADFLEET_CERT)", "--key (or GRADFLEET_KEY)"


@pytest.mark.parametrize(("given", "missing"), [(CERT, KEY), (KEY, CERT)])
def test_a_certificate_without_its_key_is_a_usage_error(capsys, tmp_path: Path, given, missing) -> None:
    """--cert without --key (or the reverse) is one line and exit 2, not a traceback and exit 1."""
    code, err = _run(capsys, given.split()[0], str(tmp_path / "client.pem"))
    assert code == 2
    assert err.startswith(f"error: {given} needs {missing}")
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("flag", "error"),
    [
        ("--ca", "error: --ca (or GRADFLEET_CA) {path}: no such file; give the PEM file of the CA"),
        ("--token-file", "error: --token-file (or GRADFLEET_TOKEN_FILE) {path}: no such file; give a file"),
    ],
)
def test_a_missing_file_names_its_flag(capsys, tmp_path: Path, flag: str, error: str) -> None:
    """A --ca or --token-file that does not exist names the flag and what the file should hold."""
    path = tmp_path / "nonexistent"
    code, err = _run(capsys, flag, str(path))
    assert code == 2
    assert err.startswith(error.format(path=path))


@pytest.mark.parametrize(("variable", "flag"), [("GRADFLEET_CERT", "--cert"), ("GRADFLEET_KEY", "--key")])
def test_client_certificate_and_key_come_from_the_environment(
    capsys, monkeypatch, tmp_path: Path, variable: str, flag: str
) -> None:
    """GRADFLEET_CERT and GRADFLEET_KEY stand for --cert and --key, like GRADFLEET_CA for --ca."""
    monkeypatch.setenv("GRADFLEET_CERT", str(tmp_path / "client.pem"))
    monkeypatch.setenv("GRADFLEET_KEY", str(tmp_path / "client.key"))
    missing, present = ("client.pem", "client.key") if flag == "--cert" else ("client.key", "client.pem")
    (tmp_path / present).write_text("present\n")
    code, err = _run(capsys)
    assert code == 2
    assert err.startswith(f"error: {flag} (or {variable}) {tmp_path / missing}: no such file")


def test_an_empty_token_file_says_so(capsys, tmp_path: Path) -> None:
    (tmp_path / "token").write_text("\n")
    code, err = _run(capsys, "--token-file", str(tmp_path / "token"))
    assert (code, err) == (
        2,
        f"error: --token-file (or GRADFLEET_TOKEN_FILE) {tmp_path / 'token'}: "
        "the file is empty; write the bearer token into it",
    )


def test_a_garbage_ca_file_is_refused_before_connecting(capsys, tmp_path: Path) -> None:
    """A --ca file holding no certificate is named as such; gRPC alone says only 'handshaker'."""
    garbage = tmp_path / "ca.pem"
    garbage.write_text("hello\n")
    code, err = _run(capsys, "--ca", str(garbage))
    assert code == 2
    assert err.startswith(f"error: --ca {garbage}: no PEM certificate in it")


def test_a_mismatched_client_key_is_refused(capsys, ca: TestCA) -> None:
    one, other = ca.issue("one", client=True), ca.issue("other", client=True)
    code, err = _run(capsys, "--ca", str(ca.cert), "--cert", str(one.cert), "--key", str(other.key))
    assert code == 2
    assert err.startswith(f"error: --cert {one.cert} / --key {other.key}: not a matching")


def test_plaintext_against_a_tls_server_hints_at_tls(capsys, tls_server: str) -> None:
    """A plaintext client hung up on by a TLS server is told to pass --ca, not to start a server."""
    assert cli.main(["list", "--server", tls_server]) == 2
    err = capsys.readouterr().err
    assert f"cannot reach the coordinator at {tls_server}" in err
    assert "if it uses TLS, pass --ca" in err and "gradfleet serve" not in err


def test_tls_against_a_plaintext_server_says_so(capsys, plain_server: str, ca: TestCA) -> None:
    assert cli.main(["list", "--server", plain_server, "--ca", str(ca.cert)]) == 2
    assert "the coordinator answered without TLS: drop --tls and --ca" in capsys.readouterr().err


def test_submit_over_tls_to_a_plaintext_server_says_so_like_list(
    capsys, plain_server: str, ca: TestCA
) -> None:
    """With two addresses, one refusing and then the plaintext server (as `localhost` gives [::1] and
    127.0.0.1), submit's retries end on the same hint as list's single call: answered without TLS.
    The last retry's error named whichever address the backoff timers failed last, so about one
    submit in three said "Connection refused ... start one"; sixteen at once all must say TLS."""
    target = f"ipv4:127.0.0.1:1,{plain_server}"
    spec = load_spec_file(EXAMPLES / "quick.yaml")

    def submit_hint(_: int) -> str:
        with CoordinatorClient(target, tls=TlsOptions(ca.cert), timeout=5) as client:
            try:
                client.submit(spec)
            except grpc.RpcError as exc:
                return format_rpc_error(exc, target, tls=True)
        return "submitted"

    with futures.ThreadPoolExecutor(16) as pool:
        hints = list(pool.map(submit_hint, range(16)))
    assert all("the coordinator answered without TLS: drop --tls and --ca" in hint for hint in hints), hints
    code = cli.main(["submit", str(EXAMPLES / "quick.yaml"), "--server", target, "--ca", str(ca.cert)])
    assert code == 2
    assert "the coordinator answered without TLS: drop --tls and --ca" in capsys.readouterr().err


def test_a_server_certificate_from_another_ca_says_which_flag(capsys, tls_server: str, tmp_path) -> None:
    other = TestCA(tmp_path, "other")
    assert cli.main(["list", "--server", tls_server, "--ca", str(other.cert)]) == 2
    assert (
        "not signed by a CA this client trusts: pass the CA that signed it to --ca" in capsys.readouterr().err
    )


@pytest.mark.parametrize(
    ("given", "dialled"),
    [
        ("127.0.0.1", "127.0.0.1:50051"),
        ("localhost", "localhost:50051"),
        ("[::1]", "[::1]:50051"),
        ("[::1]:6000", "[::1]:6000"),
        ("10.0.0.5:7000", "10.0.0.5:7000"),
        ("unix:/tmp/gf.sock", "unix:/tmp/gf.sock"),
    ],
)
def test_a_server_address_without_a_port_gets_the_default_port(given: str, dialled: str) -> None:
    """`--server 127.0.0.1` dials 50051 (the coordinator's default), not gRPC's 443."""
    from service.client import CoordinatorClient

    client = CoordinatorClient(given)
    try:
        assert client.address == dialled
    finally:
        client.close()


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("127.0.0.1:99999", "is out of range"),
        ("127.0.0.1:0", "is out of range"),
        ("[::1]:70000", "is out of range"),
        ("localhost:http", "is not a number"),
        ("localhost:", "is missing"),
    ],
)
def test_a_port_outside_1_to_65535_is_a_usage_error(capsys, address: str, problem: str) -> None:
    """gRPC would dial 99999 modulo 65536: the port is refused in one line, before any connection."""
    assert cli.main(["list", "--server", address]) == 2
    assert capsys.readouterr().err == (
        f"error: --server (or GRADFLEET_SERVER) {address}: the port {problem}; give HOST:PORT with a port "
        "from 1 to 65535\n"
    )


@pytest.mark.parametrize("address", ["127.0.0.1:65535", "[::1]:1", "unix:gradfleet.sock", "dns:///h:5"])
def test_valid_and_non_host_port_addresses_pass_the_port_check(address: str) -> None:
    check_port(address)
