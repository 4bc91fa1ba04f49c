"""How a client command connects: the TLS and token options checked up front, and gRPC errors in one line.

Files named by --ca, --cert, --key and --token-file are read and checked before any connection, so
a typo or a wrong file is an error naming the flag (gRPC itself would only report "Socket closed"
or "Failed to create security handshaker"). Connection failures that look like a TLS mismatch get a
hint about TLS instead of "start a coordinator".
"""

from __future__ import annotations

import argparse
import re
import ssl
from pathlib import Path

import grpc

from service.client import CoordinatorClient, TlsOptions


class UsageError(Exception):
    """A bad option value found before anything was sent; the CLI prints it and exits 2."""


def connect(args: argparse.Namespace) -> CoordinatorClient:
    """A client for --server with the TLS and token options of the command line and environment."""
    check_port(args.server)
    return CoordinatorClient(args.server, tls=tls_options(args), token=read_token(args))


# HOST:PORT with a plain or bracketed IPv6 host; gRPC's other forms (unix:PATH, dns:///...) go as they are.
_HOST_PORT = re.compile(r"(?:\[[^\]]*\]|[^:/\[\]]*):(?P<port>[^:/]*)")
_GRPC_SCHEMES = ("unix:", "unix-abstract:", "vsock:", "dns:", "ipv4:", "ipv6:")


def check_port(address: str) -> None:
    """UsageError unless the port of a HOST:PORT address is a number from 1 to 65535: gRPC would
    take 99999 modulo 65536 and dial another port."""
    match = _HOST_PORT.fullmatch(address)
    if match is None or address.startswith(_GRPC_SCHEMES):
        return
    port = match["port"]
    number = port.isascii() and port.isdigit()
    if not (number and 1 <= int(port) <= 65535):
        problem = "is out of range" if number else "is not a number" if port else "is missing"
        raise UsageError(
            f"--server (or GRADFLEET_SERVER) {address}: the port {problem}; give HOST:PORT with a port "
            "from 1 to 65535"
        )


def uses_tls(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "tls", False) or getattr(args, "ca", None) or getattr(args, "cert", None))


def tls_options(args: argparse.Namespace) -> TlsOptions | None:
    """The checked TLS files, or None for a plaintext channel; UsageError names the flag at fault."""
    if bool(args.cert) != bool(args.key):
        cert, key = "--cert (or GRADFLEET_CERT)", "--key (or GRADFLEET_KEY)"
        given, missing = (cert, key) if args.cert else (key, cert)
        raise UsageError(
            f"{given} needs {missing}: give the client certificate (--cert) and its private key "
            "(--key) together, or neither"
        )
    if not (args.tls or args.ca or args.cert):
        return None
    ca = cert = key = None
    if args.ca:
        what = "the PEM file of the CA that signed the coordinator's certificate"
        ca = _readable("--ca (or GRADFLEET_CA)", args.ca, what)
        _check_ca(ca)
    if args.cert:
        cert = _readable("--cert (or GRADFLEET_CERT)", args.cert, "the client certificate, PEM")
        key = _readable("--key (or GRADFLEET_KEY)", args.key, "the private key of --cert, PEM")
        _check_key_pair(cert, key)
    return TlsOptions(ca, cert, key)


def read_token(args: argparse.Namespace) -> str | None:
    """The bearer token from --token-file (or GRADFLEET_TOKEN_FILE), else GRADFLEET_TOKEN."""
    if not args.token_file:
        return args.env_token
    flag = "--token-file (or GRADFLEET_TOKEN_FILE)"
    path = _readable(flag, args.token_file, "a file holding the bearer token")
    try:
        token = path.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        raise UsageError(f"{flag} {path}: not a text file; it should hold just the bearer token") from None
    if not token:
        raise UsageError(f"{flag} {path}: the file is empty; write the bearer token into it")
    return token


def _readable(flag: str, name: str, what: str) -> Path:
    """`name` as a Path once it is known to be a readable file; else UsageError saying what it should be."""
    path = Path(name)
    try:
        with path.open("rb"):
            pass
    except FileNotFoundError:
        raise UsageError(f"{flag} {name}: no such file; give {what}") from None
    except IsADirectoryError:
        raise UsageError(f"{flag} {name}: is a folder; give {what}") from None
    except OSError as exc:
        raise UsageError(f"{flag} {name}: cannot read it ({exc.strerror}); give {what}") from None
    return path


def _check_ca(ca: Path) -> None:
    try:
        ssl.create_default_context(cafile=str(ca))
    except ssl.SSLError as exc:
        raise UsageError(
            f"--ca {ca}: no PEM certificate in it ({exc.reason or exc}); give the CA certificate "
            "(-----BEGIN CERTIFICATE-----) that signed the coordinator's certificate"
        ) from None


def _check_key_pair(cert: Path, key: Path) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:  # the password callback keeps an encrypted key from prompting on the terminal
        context.load_cert_chain(str(cert), str(key), password=lambda: b"")
    except ssl.SSLError as exc:
        raise UsageError(
            f"--cert {cert} / --key {key}: not a matching PEM certificate and unencrypted private key "
            f"({exc.reason or exc})"
        ) from None


def format_rpc_error(
    exc: grpc.RpcError, address: str, *, tls: bool = False, client_cert: bool = False
) -> str:
    """One line for stderr; an unreachable server gets the address tried and what to do.
    `tls`: the client spoke TLS; `client_cert`: it presented a certificate (--cert)."""
    code, details = exc.code(), exc.details() or ""
    if code == grpc.StatusCode.UNAVAILABLE:
        hint = _unreachable_hint(details, tls, client_cert)
        return f"error: cannot reach the coordinator at {address} ({details}); {hint}"
    return f"error: {code.name}: {details}"


def _unreachable_hint(details: str, tls: bool, client_cert: bool) -> str:
    if tls and "WRONG_VERSION_NUMBER" in details:
        return "the coordinator answered without TLS: drop --tls and --ca (and GRADFLEET_CA)"
    if tls and "CERTIFICATE_VERIFY_FAILED" in details:
        return "its certificate is not signed by a CA this client trusts: pass the CA that signed it to --ca"
    if tls and "handshake" in details.lower():
        return "the TLS handshake failed: check --ca, --cert and --key"
    if tls and "Socket closed" in details:
        # A coordinator with --tls-client-ca hangs up when the client's certificate is missing or
        # signed by another CA; gRPC reports only the closed socket.
        if client_cert:
            return (
                "the coordinator closed the TLS connection; it may not accept this client "
                "certificate: --cert must be signed by the CA of the coordinator's --tls-client-ca"
            )
        return (
            "the coordinator closed the TLS connection; it may require a client certificate signed "
            "by its --tls-client-ca: pass --cert and --key"
        )
    if not tls and "Socket closed" in details:
        # A TLS server hangs up on a plaintext hello; gRPC reports only the closed socket.
        return (
            "the coordinator closed the connection; if it uses TLS, pass --ca CA.pem "
            "(or --tls if a system CA signed its certificate)"
        )
    return "start one with `gradfleet serve`, or point --server / GRADFLEET_SERVER at it"
