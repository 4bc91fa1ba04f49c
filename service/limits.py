"""Caps on long-lived calls: WatchJob streams per client connection and in all."""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Iterator

from service.errors import LimitExceeded


class StreamLimiter:
    """Counts open streams by client; `hold` refuses one beyond either cap with LimitExceeded."""

    def __init__(self, max_total: int, max_per_client: int) -> None:
        self.max_total = max_total
        self.max_per_client = max_per_client
        self._lock = threading.Lock()
        self._open: collections.Counter[str] = collections.Counter()

    @contextlib.contextmanager
    def hold(self, client: str) -> Iterator[None]:
        self._acquire(client)
        try:
            yield
        finally:
            self._release(client)

    def open_streams(self, client: str | None = None) -> int:
        with self._lock:
            return self._open[client] if client is not None else sum(self._open.values())

    def _acquire(self, client: str) -> None:
        with self._lock:
            if self._open[client] >= self.max_per_client:
                raise LimitExceeded(
                    f"this client already has {self.max_per_client} WatchJob streams open, the limit "
                    "per connection (--max-watch-streams-per-client); close one or poll with GetJob"
                )
            if sum(self._open.values()) >= self.max_total:
                raise LimitExceeded(
                    f"the server has {self.max_total} WatchJob streams open, its limit "
                    "(--max-watch-streams); retry later or poll with GetJob"
                )
            self._open[client] += 1

    def _release(self, client: str) -> None:
        with self._lock:
            self._open[client] -= 1
            if self._open[client] <= 0:
                del self._open[client]
