"""Security through real coordinators: bearer tokens, job ownership, TLS and mutual TLS."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gradfleet.v1 import coordinator_pb2 as pb
from service import cli
from service.auth import TokenTable, parse_tokens
from service.client import CoordinatorClient, TlsOptions
from tests.conftest import require, start_coordinator
from tests.helpers import small_spec, write_blobs

try:
    from tests.tls import TestCA
except ImportError:  # the `cryptography` package (dev extra) is missing
    TestCA = None

pytestmark = [pytest.mark.integration, pytest.mark.ray]

ALICE, BOB, ROOT = "alice-token-0123456789", "bob-token-0123456789ab", "root-token-0123456789ab"
TOKENS = f"# token principal [admin]\n{ALICE} alice\n{BOB} bob\n{ROOT} ops admin\n"


@pytest.fixture
def secured(ray_session, tmp_path) -> Iterator:
    """A coordinator requiring tokens, with a small dataset under its data root."""
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKENS)
    running = start_coordinator(tmp_path, tokens_file=tokens)
    write_blobs(running.config.data_root / "blobs.npz")
    yield running
    running.stop(grace_s=1.0)


def _client(server, token: str | None) -> CoordinatorClient:
    return CoordinatorClient(server.address, token=token, timeout=10)


def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code()


@pytest.mark.parametrize("token", [None, "wrong-token-0123456789", f"{ALICE}x"])
def test_a_missing_or_wrong_token_is_unauthenticated(secured, token):
    """Every Coordinator call without a known token gets UNAUTHENTICATED, and it is counted."""
    with _client(secured, token) as client:
        assert _code(lambda: client.list()) == grpc.StatusCode.UNAUTHENTICATED
        assert _code(lambda: client.submit(small_spec("npz:blobs.npz"))) == grpc.StatusCode.UNAUTHENTICATED
        assert _code(lambda: list(client.watch("abc"))) == grpc.StatusCode.UNAUTHENTICATED
    counted = secured.metrics.registry.get_sample_value(
        "gradfleet_grpc_requests_total",
        {"method": "/gradfleet.v1.Coordinator/ListJobs", "code": "UNAUTHENTICATED"},
    )
    assert counted == 1.0
    assert secured.store.list()[0] == []  # nothing was created


def test_the_health_check_needs_no_token(secured):
    """The health service answers SERVING without a token."""
    with grpc.insecure_channel(secured.address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_a_principal_sees_only_its_own_jobs(secured, tmp_path):
    """Bob gets NOT_FOUND for Alice's job on every call (scale too) and does not list it; an admin
    sees it."""
    with _client(secured, ALICE) as alice, _client(secured, BOB) as bob, _client(secured, ROOT) as admin:
        job = alice.submit(small_spec("npz:blobs.npz", epochs=1000, batchSize=10))
        assert job.owner == "alice"
        not_found = grpc.StatusCode.NOT_FOUND
        assert _code(lambda: bob.get(job.id)) == not_found
        assert _code(lambda: list(bob.watch(job.id))) == not_found
        assert _code(lambda: bob.cancel(job.id)) == not_found
        assert _code(lambda: bob.download(job.id, tmp_path / "m.npz")) == not_found
        assert _code(lambda: bob.scale(job.id, 1)) == not_found
        assert bob.list() == []
        assert [j.id for j in alice.list()] == [job.id]
        assert admin.get(job.id).owner == "alice"
        assert [j.id for j in admin.list()] == [job.id]
        assert alice.get(job.id).state != pb.CANCELLED  # bob's cancel did nothing
        assert admin.cancel(job.id).id == job.id


def test_a_request_id_is_scoped_to_its_principal(secured):
    """Bob reusing Alice's request id gets a job of his own (same spec) or his own retry (another
    spec), never Alice's job or its id; each principal's retries still return its own job."""
    spec = small_spec("npz:blobs.npz", epochs=1000, batchSize=10, requestId="alice-rid-7")
    other = small_spec("npz:blobs.npz", epochs=1000, batchSize=10, seed=99, requestId="alice-rid-7")
    with _client(secured, ALICE) as alice, _client(secured, BOB) as bob:
        mine = alice.submit(spec)
        theirs = bob.submit(spec)
        assert theirs.owner == "bob" and theirs.id != mine.id
        assert bob.submit(spec).id == theirs.id and alice.submit(spec).id == mine.id
        with pytest.raises(grpc.RpcError) as caught:
            bob.submit(other)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert theirs.id in caught.value.details() and mine.id not in caught.value.details()
        assert [j.id for j in bob.list()] == [theirs.id]
        for job in (mine, theirs):
            secured.scheduler.cancel(job.id)


def test_the_cli_takes_its_token_from_the_environment_never_a_flag(secured, capsys, monkeypatch):
    """`gradfleet list` sends the token in GRADFLEET_TOKEN and refuses `--token` (saying why,
    without echoing it) and abbreviations of --token-file, so no token goes on a command line."""
    monkeypatch.delenv("GRADFLEET_TOKEN_FILE", raising=False)
    monkeypatch.setenv("GRADFLEET_TOKEN", ALICE)
    assert cli.main(["list", "--server", secured.address]) == 0
    assert "no jobs" in capsys.readouterr().out
    with pytest.raises(SystemExit) as usage:
        cli.main(["list", "--server", secured.address, "--token", ALICE])
    assert usage.value.code == 2
    refusal = capsys.readouterr().err
    assert "there is no --token option" in refusal and ALICE not in refusal
    with pytest.raises(SystemExit):
        cli.main(["list", "--server", secured.address, "--token-f", "my-token"])
    assert "unrecognized arguments: --token-f" in capsys.readouterr().err
    monkeypatch.delenv("GRADFLEET_TOKEN")
    assert cli.main(["list", "--server", secured.address]) == 2
    assert "UNAUTHENTICATED" in capsys.readouterr().err


def test_tokens_rotate_without_a_restart(secured, tmp_path):
    """A rewritten token file takes effect within about a second: new token in, old token out."""
    new_alice = "alice-rotated-0123456789"
    path = secured.config.tokens_file
    path.write_text(TOKENS.replace(ALICE, new_alice))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))  # a surely different mtime
    deadline = time.monotonic() + 5
    with _client(secured, new_alice) as fresh, _client(secured, ALICE) as stale:
        while True:
            try:
                fresh.list()
                break
            except grpc.RpcError:
                assert time.monotonic() < deadline, "the new token was never accepted"
                time.sleep(0.2)
        assert _code(lambda: stale.list()) == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("short alice\n", "tokens:1: token too short"),
        (f"{ALICE} alice boss now\n", "tokens:1: expected `token principal [admin]`, got 4 words"),
        (f"{ALICE} ops Admin\n", "tokens:1: the third word must be `admin` .or left out., got 'Admin'"),
        (f"{ALICE} alice\n{ALICE} bob\n", "tokens:2: the same token is listed twice"),
        ("# only a comment\n", "tokens: no tokens"),
    ],
)
def test_a_malformed_token_file_is_refused_with_its_line(text, fragment):
    """Each malformed token file is refused with the line and the problem."""
    with pytest.raises(ValueError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        parse_tokens(text, "tokens")


def test_a_broken_edit_keeps_the_previous_tokens(tmp_path):
    """A token file rewritten with an error keeps serving the tokens it had."""
    path = tmp_path / "tokens"
    path.write_text(TOKENS)
    now = [0.0]
    table = TokenTable(path, clock=lambda: now[0])
    path.write_text("garbage\n")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    now[0] = 5.0
    assert table.lookup(ALICE).name == "alice"
    assert table.lookup(ROOT).admin


def test_a_broken_token_file_is_logged_once_per_version(tmp_path, caplog):
    """Checks of a token file that stays broken log it once, not once a second; each further broken
    version logs again, and a fixed one is loaded (all while the old tokens keep working)."""
    path = tmp_path / "tokens"
    path.write_text(TOKENS)
    now = [0.0]
    table = TokenTable(path, clock=lambda: now[0])

    def check_at(seconds: float) -> None:
        now[0] = seconds
        assert table.lookup(ALICE).name == "alice"

    def refusals() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]

    caplog.set_level("INFO", logger="service.auth")
    path.write_text("garbage\n")
    for second in range(1, 7):
        check_at(second)
    assert len(refusals()) == 1 and "tokens:1: expected `token principal [admin]`" in refusals()[0]
    path.write_text("still garbage\n")  # another size: another version
    for second in range(7, 10):
        check_at(second)
    assert len(refusals()) == 2 and "token too short (5 characters)" in refusals()[1]
    path.unlink()
    for second in range(10, 13):
        check_at(second)
    assert len(refusals()) == 3 and "No such file" in refusals()[2]
    path.write_text(f"{TOKENS}{'carol-token-0123456789'} carol\n")
    check_at(13)
    assert table.lookup("carol-token-0123456789").name == "carol"
    assert len(refusals()) == 3
    assert any("reloaded 4 tokens" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------------------------
# TLS


@pytest.fixture
def pki(tmp_path) -> dict:
    require(TestCA is not None, "the cryptography package is not installed (pip install -e '.[dev]')")
    server_ca, client_ca, stranger = (TestCA(tmp_path, n) for n in ("server-ca", "client-ca", "stranger"))
    return {
        "server_ca": server_ca,
        "server": server_ca.issue("coordinator"),
        "client_ca": client_ca,
        "client": client_ca.issue("alice-laptop", client=True),
        "stranger": stranger,
        "stranger_client": stranger.issue("mallory", client=True),
    }


def _tls_server(tmp_path: Path, pki: dict, *, mutual: bool):
    return start_coordinator(
        tmp_path,
        tls_cert=pki["server"].cert,
        tls_key=pki["server"].key,
        tls_client_ca=pki["client_ca"].cert if mutual else None,
    )


def _lists(address: str, tls: TlsOptions | None) -> grpc.StatusCode:
    """OK if ListJobs works over a channel with `tls` (None: plaintext), else the error code."""
    with CoordinatorClient(address, tls=tls, timeout=5) as client:
        try:
            client.list()
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def test_tls_handshake_needs_a_trusted_ca(ray_session, tmp_path, pki):
    """Over TLS a client trusting the server's CA connects; one trusting another CA, or the
    system roots, or speaking plaintext, does not."""
    server = _tls_server(tmp_path, pki, mutual=False)
    try:
        assert _lists(server.address, TlsOptions(ca=pki["server_ca"].cert)) == grpc.StatusCode.OK
        assert _lists(server.address, TlsOptions(ca=pki["stranger"].cert)) == grpc.StatusCode.UNAVAILABLE
        assert _lists(server.address, TlsOptions()) == grpc.StatusCode.UNAVAILABLE
        assert _lists(server.address, None) == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(grace_s=1.0)


def test_mutual_tls_needs_a_client_certificate_from_the_client_ca(ray_session, tmp_path, pki):
    """With --tls-client-ca only clients presenting a certificate that CA signed get in."""
    server = _tls_server(tmp_path, pki, mutual=True)
    ca = pki["server_ca"].cert
    try:
        good, bad = pki["client"], pki["stranger_client"]
        assert _lists(server.address, TlsOptions(ca, good.cert, good.key)) == grpc.StatusCode.OK
        assert _lists(server.address, TlsOptions(ca)) == grpc.StatusCode.UNAVAILABLE
        assert _lists(server.address, TlsOptions(ca, bad.cert, bad.key)) == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(grace_s=1.0)


def test_cli_speaks_tls_with_a_token_file(ray_session, tmp_path, pki, capsys, monkeypatch):
    """`gradfleet list --ca --cert --key --token-file` reaches a TLS + mTLS + token server."""
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKENS)
    (tmp_path / "my-token").write_text(ALICE + "\n")
    server = start_coordinator(
        tmp_path,
        tls_cert=pki["server"].cert,
        tls_key=pki["server"].key,
        tls_client_ca=pki["client_ca"].cert,
        tokens_file=tokens,
    )
    monkeypatch.delenv("GRADFLEET_TOKEN", raising=False)
    client = pki["client"]
    tls_args = ["--ca", str(pki["server_ca"].cert), "--cert", str(client.cert), "--key", str(client.key)]
    try:
        args = ["list", "--server", server.address, *tls_args]
        assert cli.main([*args, "--token-file", str(tmp_path / "my-token")]) == 0
        assert "no jobs" in capsys.readouterr().out
        assert cli.main(args) == 2
        assert "UNAUTHENTICATED" in capsys.readouterr().err
    finally:
        server.stop(grace_s=1.0)


def test_mutual_tls_refusals_name_the_client_certificate_flags(ray_session, tmp_path, pki, capsys):
    """A client the mTLS coordinator hangs up on (no certificate, or one from another CA) is told
    about --cert/--key, not to start a coordinator."""
    server = _tls_server(tmp_path, pki, mutual=True)
    base = ["list", "--server", server.address, "--ca", str(pki["server_ca"].cert)]
    stranger = pki["stranger_client"]
    try:
        assert cli.main(base) == 2
        err = capsys.readouterr().err
        assert (
            "it may require a client certificate signed by its --tls-client-ca: pass --cert and --key" in err
        )
        assert "gradfleet serve" not in err
        assert cli.main([*base, "--cert", str(stranger.cert), "--key", str(stranger.key)]) == 2
        err = capsys.readouterr().err
        assert "--cert must be signed by the CA of the coordinator's --tls-client-ca" in err
        assert "gradfleet serve" not in err
    finally:
        server.stop(grace_s=1.0)
