"""The one place where exceptions become gRPC statuses, and where every call is timed.

Domain errors (`GradfleetError`) carry their status code and a message meant for the client;
anything else is a bug: its traceback goes to the server log and the client sees INTERNAL with a
short message. Each call is reported as (full method name, status code name, seconds), labelled
by method only, never by request content.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from service.errors import GradfleetError, InvalidRequest

_LOG = logging.getLogger(__name__)
INTERNAL_MESSAGE = "internal error; see the server log"
# A status message travels percent-encoded in a header, and gRPC caps a call's headers at 8 KiB: a
# longer one arrives as RESOURCE_EXHAUSTED "metadata size exceeds soft limit", losing the real code
# and the field. Messages are cut to this many bytes on the wire.
MAX_MESSAGE_WIRE_BYTES = 6000

OnCall = Callable[[str, str, float], None]


class ErrorMappingInterceptor(grpc.ServerInterceptor):
    """Map exceptions to statuses and report (method, code name, latency in s) to `on_call`."""

    def __init__(self, on_call: OnCall | None = None) -> None:
        self._on_call = on_call

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None  # unknown method: grpc answers UNIMPLEMENTED itself
        method = handler_call_details.method
        parse = None if handler.request_streaming else _tolerant(handler.request_deserializer)
        if handler.response_streaming:
            return rewrap_handler(handler, lambda behavior: self._streaming(method, behavior), parse)
        return rewrap_handler(handler, lambda behavior: self._unary(method, behavior), parse)

    def _unary(self, method: str, behavior: Callable) -> Callable:
        def wrapper(request_or_iterator: Any, context: grpc.ServicerContext) -> Any:
            start = time.perf_counter()
            code = grpc.StatusCode.UNKNOWN
            try:
                _reject_malformed(request_or_iterator)
                response = behavior(request_or_iterator, context)
                code = context.code() or grpc.StatusCode.OK
                return response
            except Exception as exc:
                code, message = _status_for(exc, method, context)
                if message is None:
                    raise  # the servicer aborted with its own status: keep it
                context.abort(code, message)
            finally:
                self._report(method, code, time.perf_counter() - start)

        return wrapper

    def _streaming(self, method: str, behavior: Callable) -> Callable:
        def wrapper(request_or_iterator: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            start = time.perf_counter()
            code = grpc.StatusCode.UNKNOWN
            try:
                _reject_malformed(request_or_iterator)
                yield from behavior(request_or_iterator, context)
                code = context.code() or grpc.StatusCode.OK
            except GeneratorExit:  # the client went away and grpc dropped the stream
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception as exc:
                code, message = _status_for(exc, method, context)
                if message is None:
                    raise  # the servicer aborted with its own status: keep it
                context.abort(code, message)
            finally:
                self._report(method, code, time.perf_counter() - start)

        return wrapper

    def _report(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        if self._on_call is None:
            return
        try:
            self._on_call(method, code.name, seconds)
        except Exception:  # a metrics bug must not fail the call
            _LOG.exception("on_call callback failed for %s", method)


class _Malformed:
    """Stands in for a request whose bytes did not parse, so the call can answer INVALID_ARGUMENT
    (grpc itself would answer INTERNAL, blaming the server for a client's mistake)."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _tolerant(deserializer: Callable | None) -> Callable | None:
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # protobuf's DecodeError, or anything a custom parser raises
            return _Malformed(exc)

    return parse


def _reject_malformed(request: Any) -> None:
    if isinstance(request, _Malformed):
        raise InvalidRequest(
            f"the request is not a valid protobuf message of the method's type ({request.error}); "
            "use the generated client or check the serialization"
        )


def _status_for(
    exc: Exception, method: str, context: grpc.ServicerContext
) -> tuple[grpc.StatusCode, str | None]:
    """The status `exc` maps to, and the message to send (None: already aborted, send nothing)."""
    if _was_aborted(exc, context):
        return context.code(), None
    if isinstance(exc, GradfleetError):
        _LOG.debug("%s -> %s: %s", method, exc.code.name, exc.message)
        return exc.code, shortened(exc.message)
    _LOG.exception("unexpected error in %s", method)
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE


def shortened(message: str, limit: int = MAX_MESSAGE_WIRE_BYTES) -> str:
    """`message`, cut in the middle to at most `limit` bytes once percent-encoded: the field comes
    first and the fix last, so both ends stay."""
    costs = [_wire_bytes(ch) for ch in message]
    if sum(costs) <= limit:
        return message
    note = f" ... [{len(message):,} characters in all, shortened] ... "
    budget = limit - len(note)
    head = _fitting(costs, budget * 2 // 3)
    tail = _fitting(costs[::-1], budget - sum(costs[:head]))
    return message[:head] + note + message[len(message) - tail :]


def _wire_bytes(ch: str) -> int:
    # grpc sends printable ASCII but '%' as is, every other UTF-8 byte as %XX.
    return 1 if " " <= ch <= "~" and ch != "%" else 3 * len(ch.encode("utf-8", "surrogatepass"))


def _fitting(costs: list[int], budget: int) -> int:
    """How many of the first `costs` fit in `budget`."""
    total = 0
    for count, cost in enumerate(costs):
        total += cost
        if total > budget:
            return count
    return len(costs)


def _was_aborted(exc: Exception, context: grpc.ServicerContext) -> bool:
    # grpc's context.abort() sets the code and raises a bare Exception(); nothing else does both.
    return type(exc) is Exception and not exc.args and context.code() is not None


def rewrap_handler(
    handler: grpc.RpcMethodHandler,
    wrap: Callable[[Callable], Callable],
    request_deserializer: Callable | None = None,
) -> Any:
    """A handler like `handler` whose behavior is wrap(behavior); one branch per arity."""
    kwargs = {
        "request_deserializer": request_deserializer or handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(wrap(handler.stream_stream), **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(wrap(handler.stream_unary), **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(wrap(handler.unary_stream), **kwargs)
    return grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary), **kwargs)
