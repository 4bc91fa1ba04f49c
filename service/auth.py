"""Bearer-token authentication: a token file, the principals it names, and the server interceptor.

The token file has one `token principal [admin]` line per token; `#` starts a comment. It is read
again when it changes (checked at most once a second), so tokens are added and revoked without a
restart; a version that cannot be read is logged once and the old tokens stay. Tokens are kept only
as SHA-256 digests and looked up by digest, so lookups take the same time whatever the token.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from service.errors import Unauthenticated
from service.interceptors import rewrap_handler

log = logging.getLogger(__name__)

# Health checks stay open so load balancers and orchestrators can probe without a token.
OPEN_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})
MIN_TOKEN_CHARS = 16
RELOAD_CHECK_S = 1.0


@dataclass(frozen=True)
class Principal:
    """Who is calling; an admin sees every job, anyone else only their own."""

    name: str
    admin: bool = False

    def can_see(self, owner: str) -> bool:
        return self.admin or owner == self.name


# Without a token file there is one trusted user: everything is visible and jobs have no owner.
ANONYMOUS = Principal("", admin=True)


def principal_of(context: Any) -> Principal:
    """The principal the auth interceptor attached to a call's context (ANONYMOUS without auth)."""
    return getattr(context, "principal", ANONYMOUS)


def parse_tokens(text: str, origin: str) -> dict[bytes, Principal]:
    """Token digest -> principal from the text of a token file; ValueError names the line."""
    table: dict[bytes, Principal] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        words = raw.split("#", 1)[0].split()
        if not words:
            continue
        where = f"{origin}:{number}"
        if len(words) not in (2, 3):
            raise ValueError(f"{where}: expected `token principal [admin]`, got {len(words)} words")
        if len(words) == 3 and words[2] != "admin":
            raise ValueError(f"{where}: the third word must be `admin` (or left out), got {words[2]!r}")
        token, name = words[0], words[1]
        if len(token) < MIN_TOKEN_CHARS:
            raise ValueError(
                f"{where}: token too short ({len(token)} characters); use at least {MIN_TOKEN_CHARS}, "
                "e.g. `openssl rand -hex 32`"
            )
        digest = _digest(token)
        if digest in table:
            raise ValueError(f"{where}: the same token is listed twice")
        table[digest] = Principal(name, admin=len(words) == 3)
    if not table:
        raise ValueError(f"{origin}: no tokens; add `token principal [admin]` lines")
    return table


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenTable:
    """The tokens of a file, re-read when the file changes; a broken edit keeps the old tokens."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self._path = path
        self._clock = clock
        self._lock = threading.Lock()
        self._version = _file_version(path)
        self._table = parse_tokens(path.read_text(encoding="utf-8"), str(path))
        self._checked = clock()
        self._refused: FileVersion | None = _NOT_REFUSED  # the broken state last logged (None: no file)

    def lookup(self, token: str) -> Principal | None:
        self._maybe_reload()
        return self._table.get(_digest(token))

    def _maybe_reload(self) -> None:
        now = self._clock()
        with self._lock:
            if now - self._checked < RELOAD_CHECK_S:
                return
            self._checked = now
            try:
                version = _file_version(self._path)
            except OSError as exc:
                self._refuse(None, exc)  # gone or unreadable: one state, logged once
                return
            if version in (self._version, self._refused):
                return
            try:
                self._table = parse_tokens(self._path.read_text(encoding="utf-8"), str(self._path))
            except (OSError, ValueError) as exc:
                self._refuse(version, exc)
                return
            self._version, self._refused = version, _NOT_REFUSED
            log.info("reloaded %d tokens from %s", len(self._table), self._path)

    def _refuse(self, version: FileVersion | None, exc: Exception) -> None:
        """Keep the old tokens; say so once per state of the file, not at every check while it stays bad."""
        if version != self._refused:
            log.error("keeping the previous tokens: cannot reload %s: %s", self._path, exc)
        self._refused = version


FileVersion = tuple[int, int, int, int]  # (inode, modification and change times in ns, size)
_NOT_REFUSED = (-1, -1, -1, -1)  # no file has this version


def _file_version(path: Path) -> FileVersion:
    """What tells one state of the file from the next: a replaced file has another inode, and the change
    time also moves on a chmod (a file made readable again must be read)."""
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size


class AuthInterceptor(grpc.ServerInterceptor):
    """Require `authorization: Bearer <token>` on every call but health checks.

    A refused call raises Unauthenticated inside the handler, so an interceptor placed outside
    this one (the error mapper) turns it into the status and counts it.
    """

    def __init__(self, tokens: TokenTable, open_methods: Sequence[str] = OPEN_METHODS) -> None:
        self._tokens = tokens
        self._open = frozenset(open_methods)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method in self._open:
            return handler
        principal = self._authenticate(handler_call_details.invocation_metadata or ())
        if handler.response_streaming:
            return rewrap_handler(handler, lambda behavior: _streaming(behavior, principal))
        return rewrap_handler(handler, lambda behavior: _unary(behavior, principal))

    def _authenticate(self, metadata: Sequence[tuple[str, Any]]) -> Principal | None:
        values = [value for key, value in metadata if key == "authorization"]
        if len(values) != 1 or not isinstance(values[0], str):
            return None
        scheme, _, token = values[0].partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return self._tokens.lookup(token.strip())


_REFUSED = (
    "missing or unknown bearer token; send metadata `authorization: Bearer <token>` "
    "(gradfleet: --token-file FILE or GRADFLEET_TOKEN)"
)


def _unary(behavior: Callable, principal: Principal | None) -> Callable:
    def wrapper(request: Any, context: grpc.ServicerContext) -> Any:
        if principal is None:
            raise Unauthenticated(_REFUSED)
        return behavior(request, AuthenticatedContext(context, principal))

    return wrapper


def _streaming(behavior: Callable, principal: Principal | None) -> Callable:
    def wrapper(request: Any, context: grpc.ServicerContext) -> Any:
        if principal is None:
            raise Unauthenticated(_REFUSED)
        yield from behavior(request, AuthenticatedContext(context, principal))

    return wrapper


class AuthenticatedContext:
    """A servicer context that also carries the caller's `principal`; everything else delegates."""

    def __init__(self, context: grpc.ServicerContext, principal: Principal) -> None:
        self._context = context
        self.principal = principal

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)
