"""Caps on long-lived calls: streams of every kind per client connection and in all.

The gRPC server is synchronous: a stream (WatchJob, DownloadModel, Health/Watch, reflection) holds
one RPC thread until it ends. One budget, below --rpc-threads, counts them all, so unary calls
always find a thread; a stream beyond it is refused with RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from gradfleet.v1 import coordinator_pb2 as pb
from service.errors import LimitExceeded
from service.interceptors import rewrap_handler

_COORDINATOR = "/" + pb.DESCRIPTOR.services_by_name["Coordinator"].full_name
# The name a refusal gives each kind of stream, and what the client can do instead.
STREAM_KINDS = {
    f"{_COORDINATOR}/WatchJob": ("WatchJob", "poll with GetJob"),
    f"{_COORDINATOR}/DownloadModel": ("DownloadModel", "download once another download has ended"),
    "/grpc.health.v1.Health/Watch": ("Health/Watch", "probe with Health/Check"),
}
_SHARED = "WatchJob, DownloadModel and Health/Watch streams count together"

Release = Callable[[], None]


def stream_kind(method: str) -> tuple[str, str]:
    """(name, advice) for a streaming method; other streams (reflection) get generic ones."""
    return STREAM_KINDS.get(method, (method.rsplit("/", 1)[-1] or method, "retry later"))


class StreamLimiter:
    """Counts open streams by client; `acquire` refuses one beyond either cap with LimitExceeded."""

    def __init__(self, max_total: int, max_per_client: int) -> None:
        self.max_total = max_total
        self.max_per_client = max_per_client
        self._lock = threading.Lock()
        self._open: collections.Counter[str] = collections.Counter()

    def open_streams(self, client: str | None = None) -> int:
        with self._lock:
            return self._open[client] if client is not None else sum(self._open.values())

    def acquire(self, client: str, method: str) -> Release:
        """Take a place for a stream of `method`; the returned function gives it back (once, however
        often it is called)."""
        name, advice = stream_kind(method)
        with self._lock:
            if self._open[client] >= self.max_per_client:
                raise LimitExceeded(
                    f"cannot open another {name} stream: this connection already has {self.max_per_client} "
                    f"streams open, the limit per connection (--max-watch-streams-per-client; {_SHARED}); "
                    f"close one or {advice}"
                )
            if sum(self._open.values()) >= self.max_total:
                raise LimitExceeded(
                    f"cannot open another {name} stream: the server has {self.max_total} streams open, its "
                    f"limit (--max-watch-streams; {_SHARED}); retry later or {advice}"
                )
            self._open[client] += 1
        released = False

        def release() -> None:
            nonlocal released
            with self._lock:
                if released:
                    return
                released = True
                self._open[client] -= 1
                if self._open[client] <= 0:
                    del self._open[client]

        return release


class StreamLimitInterceptor(grpc.ServerInterceptor):
    """Hold a place in `limiter` for every streaming call, keyed by its connection (gRPC peer).

    The place is given back when the call ends, a cancel or a lost connection included, through the
    call's termination callback: a handler blocked in a wait, or a generator that gRPC drops without
    closing, must not keep it until garbage collection.
    """

    def __init__(self, limiter: StreamLimiter) -> None:
        self._limiter = limiter

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or not (handler.request_streaming or handler.response_streaming):
            return handler
        method = handler_call_details.method
        if handler.response_streaming:
            return rewrap_handler(handler, lambda behavior: self._streaming(method, behavior))
        return rewrap_handler(handler, lambda behavior: self._unary(method, behavior))

    def _hold(self, method: str, context: grpc.ServicerContext) -> Release:
        release = self._limiter.acquire(context.peer(), method)
        if not context.add_callback(release):  # the call has already ended
            release()
        return release

    def _streaming(self, method: str, behavior: Callable) -> Callable:
        def wrapper(request_or_iterator: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            release = self._hold(method, context)
            try:
                yield from behavior(request_or_iterator, context)
            finally:
                release()

        return wrapper

    def _unary(self, method: str, behavior: Callable) -> Callable:
        def wrapper(request_iterator: Any, context: grpc.ServicerContext) -> Any:
            release = self._hold(method, context)
            try:
                return behavior(request_iterator, context)
            finally:
                release()

        return wrapper
