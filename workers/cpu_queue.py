"""The order in which one coordinator's jobs reserve CPUs: the oldest waiting job first.

Ray places pending placement groups in no order a job can rely on: a group asked for after CPUs were
freed is often placed before one that had waited for minutes (Ray retries a waiting group only after
a back-off). So a job asks Ray for its CPUs only while no older job of the same coordinator waits for
CPUs, and takes back a request still pending when an older job starts waiting.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Iterator


class CpuQueue:
    """Tickets in dispatch order (a lower ticket is an older job) and the tickets now waiting for CPUs."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._waiting: set[int] = set()
        self._tickets = itertools.count()

    def ticket(self) -> int:
        """A place in line, taken when a job is dispatched: it keeps it for every reservation it makes
        (a restart after a lost node waits before younger jobs too)."""
        return next(self._tickets)

    @contextlib.contextmanager
    def waiting(self, ticket: int) -> Iterator[None]:
        """Stand in line while the body reserves CPUs; leaving (with or without them) lets the next go."""
        with self._changed:
            self._waiting.add(ticket)
        try:
            yield
        finally:
            with self._changed:
                self._waiting.discard(ticket)
                self._changed.notify_all()

    def ahead_of(self, ticket: int, wait_s: float = 0.0) -> int:
        """How many older jobs wait for CPUs; waits up to `wait_s` for that to become none."""
        with self._changed:
            self._changed.wait_for(lambda: self._count_ahead(ticket) == 0, timeout=wait_s)
            return self._count_ahead(ticket)

    def waiters(self) -> int:
        """How many jobs wait for CPUs now."""
        with self._changed:
            return len(self._waiting)

    def _count_ahead(self, ticket: int) -> int:
        return sum(1 for other in self._waiting if other < ticket)
