"""The error-mapping interceptor, exercised through a real gRPC server on a free local port."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures

import grpc
import pytest

from gradfleet.v1 import coordinator_pb2 as pb
from gradfleet.v1 import coordinator_pb2_grpc as pb_grpc
from service import errors
from service.interceptors import INTERNAL_MESSAGE, MAX_MESSAGE_WIRE_BYTES, ErrorMappingInterceptor, shortened

SECRET = "secret-internal-detail"  # must never reach a client

# One row per domain error: the exception the servicer raises and the status the client sees.
ERROR_ROWS = [
    (errors.GradfleetError("generic failure"), grpc.StatusCode.INTERNAL),
    (errors.InvalidSpec("layers[1].units", "got 0"), grpc.StatusCode.INVALID_ARGUMENT),
    (errors.InvalidRequest("job_id: empty"), grpc.StatusCode.INVALID_ARGUMENT),
    (errors.JobNotFound("abc"), grpc.StatusCode.NOT_FOUND),
    (errors.JobNotReady("job abc is RUNNING"), grpc.StatusCode.FAILED_PRECONDITION),
    (errors.LimitExceeded("1000 jobs queued"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.Unauthenticated("no token"), grpc.StatusCode.UNAUTHENTICATED),
    (errors.Unavailable("shutting down"), grpc.StatusCode.UNAVAILABLE),
    (errors.TrainingFailed("loss became NaN"), grpc.StatusCode.INTERNAL),
    (
        errors.StateNotWritable("cannot write jobs.sqlite3: no space left", disk_full=True),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ),
]
ERRORS_BY_ID = {type(exc).__name__: exc for exc, _ in ERROR_ROWS}


def _raise_for(job_id: str, context: grpc.ServicerContext) -> None:
    """Behaviour chosen by the request: a domain error by class name, a bug, or an abort."""
    if job_id in ERRORS_BY_ID:
        raise ERRORS_BY_ID[job_id]
    if job_id == "bug":
        raise KeyError(SECRET)
    if job_id.startswith("long:"):  # "long:CHAR": a message far over gRPC's 8 KiB header limit
        raise errors.InvalidSpec("dataset.uri", f"cannot read {job_id[5:] * 20_000}; check the path")
    if job_id == "abort":
        context.abort(grpc.StatusCode.PERMISSION_DENIED, "denied by the servicer")


class _Servicer(pb_grpc.CoordinatorServicer):
    def GetJob(self, request: pb.GetJobRequest, context: grpc.ServicerContext) -> pb.Job:
        _raise_for(request.job_id, context)
        return pb.Job(id=request.job_id)

    def WatchJob(self, request: pb.WatchJobRequest, context: grpc.ServicerContext) -> Iterator[pb.JobEvent]:
        yield pb.JobEvent(kind=pb.JobEvent.STATE)
        if request.job_id == "forever":
            while context.is_active():
                time.sleep(0.01)
                yield pb.JobEvent(kind=pb.JobEvent.PROGRESS)
        _raise_for(request.job_id, context)
        yield pb.JobEvent(kind=pb.JobEvent.PROGRESS)


def _echo_handlers() -> grpc.GenericRpcHandler:
    """A raw-bytes service covering the two request-streaming arities the Coordinator lacks."""

    def total(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        data = b"".join(requests)
        _raise_for(data.decode(), context)
        return data

    def echo(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        for data in requests:
            yield data
            _raise_for(data.decode(), context)

    return grpc.method_handlers_generic_handler(
        "test.Echo",
        {
            "Total": grpc.stream_unary_rpc_method_handler(total),
            "Echo": grpc.stream_stream_rpc_method_handler(echo),
        },
    )


class _Calls:
    """Thread-safe record of on_call reports."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str, float]] = []
        self._lock = threading.Lock()

    def __call__(self, method: str, code: str, seconds: float) -> None:
        with self._lock:
            self.items.append((method, code, seconds))

    def wait_for(self, method: str, timeout: float = 5.0) -> tuple[str, str, float]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                for item in self.items:
                    if item[0] == method:
                        return item
            time.sleep(0.01)
        raise AssertionError(f"no on_call report for {method}; got {self.items}")


@pytest.fixture
def calls() -> _Calls:
    return _Calls()


@pytest.fixture
def channel(calls: _Calls) -> Iterator[grpc.Channel]:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        interceptors=[ErrorMappingInterceptor(on_call=calls)],
    )
    pb_grpc.add_CoordinatorServicer_to_server(_Servicer(), server)
    server.add_generic_rpc_handlers((_echo_handlers(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as chan:
        yield chan
    server.stop(grace=None)


@pytest.fixture
def stub(channel: grpc.Channel) -> pb_grpc.CoordinatorStub:
    return pb_grpc.CoordinatorStub(channel)


def _rpc_error(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


@pytest.mark.parametrize(("exc", "code"), ERROR_ROWS, ids=[type(e).__name__ for e, _ in ERROR_ROWS])
def test_domain_error_maps_to_its_code_in_unary_call(stub, calls, exc, code) -> None:
    """A domain error raised by a unary handler reaches the client as its code and message."""
    err = _rpc_error(lambda: stub.GetJob(pb.GetJobRequest(job_id=type(exc).__name__), timeout=5))
    assert (err.code(), err.details()) == (code, exc.message)
    assert calls.wait_for("/gradfleet.v1.Coordinator/GetJob")[1] == code.name


@pytest.mark.parametrize(("exc", "code"), ERROR_ROWS, ids=[type(e).__name__ for e, _ in ERROR_ROWS])
def test_domain_error_maps_to_its_code_mid_stream(stub, calls, exc, code) -> None:
    """A domain error raised while streaming ends the stream with its code after earlier events."""
    events: list[pb.JobEvent] = []
    request = pb.WatchJobRequest(job_id=type(exc).__name__)
    err = _rpc_error(lambda: events.extend(stub.WatchJob(request, timeout=5)))
    assert [e.kind for e in events] == [pb.JobEvent.STATE]
    assert (err.code(), err.details()) == (code, exc.message)
    assert calls.wait_for("/gradfleet.v1.Coordinator/WatchJob")[1] == code.name


@pytest.mark.parametrize("char", ["a", "\u20ac"], ids=["ascii", "euro-sign"])
def test_a_message_too_long_for_a_header_keeps_its_code_field_and_fix(stub, char) -> None:
    """gRPC refuses a status header over 8 KiB (the client would see RESOURCE_EXHAUSTED with no
    field): the message is cut in the middle instead, keeping the code, the field and the fix."""
    err = _rpc_error(lambda: stub.GetJob(pb.GetJobRequest(job_id=f"long:{char}"), timeout=5))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith("dataset.uri: cannot read " + char * 100)
    assert err.details().endswith(char * 100 + "; check the path")
    assert "characters in all, shortened" in err.details()


def test_shortened_messages_fit_their_wire_budget() -> None:
    """Short messages pass unchanged; long ones fit the budget once percent-encoded, both ends kept."""
    assert shortened("job_id: empty") == "job_id: empty"
    for char, bytes_each in (("a", 1), ("%", 3), ("\u20ac", 9), ("\U0001f600", 12)):
        message = "head " + char * 10_000 + " tail"
        cut = shortened(message)
        wire = sum(1 if " " <= c <= "~" and c != "%" else 3 * len(c.encode()) for c in cut)
        assert MAX_MESSAGE_WIRE_BYTES - bytes_each < wire <= MAX_MESSAGE_WIRE_BYTES, char
        assert cut.startswith("head " + char) and cut.endswith(char + " tail")


def test_error_table_covers_every_domain_error() -> None:
    """Every GradfleetError subclass has a row in the mapping table."""
    seen, todo = set(), [errors.GradfleetError]
    while todo:
        cls = todo.pop()
        seen.add(cls)
        todo.extend(cls.__subclasses__())
    assert {c for c in seen if c.__module__ == errors.__name__} <= {type(e) for e, _ in ERROR_ROWS}


def test_unexpected_exception_is_internal_without_leaking_details(stub, calls, caplog) -> None:
    """A bug becomes INTERNAL with a fixed message; the traceback goes to the server log only."""
    with caplog.at_level(logging.ERROR, logger="service.interceptors"):
        err = _rpc_error(lambda: stub.GetJob(pb.GetJobRequest(job_id="bug"), timeout=5))
        calls.wait_for("/gradfleet.v1.Coordinator/GetJob")
    assert (err.code(), err.details()) == (grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
    assert SECRET not in err.details() and "Traceback" not in err.details()
    logged = [r for r in caplog.records if r.name == "service.interceptors" and r.exc_info]
    assert logged and logged[0].exc_info[0] is KeyError


def test_unexpected_exception_mid_stream_is_internal(stub, calls) -> None:
    """A bug while streaming ends the stream with INTERNAL and the fixed message."""
    request = pb.WatchJobRequest(job_id="bug")
    err = _rpc_error(lambda: list(stub.WatchJob(request, timeout=5)))
    assert (err.code(), err.details()) == (grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
    assert calls.wait_for("/gradfleet.v1.Coordinator/WatchJob")[1] == "INTERNAL"


def test_servicer_abort_keeps_its_code(stub, calls) -> None:
    """A call the servicer aborts itself keeps that status, and on_call records it."""
    err = _rpc_error(lambda: stub.GetJob(pb.GetJobRequest(job_id="abort"), timeout=5))
    assert (err.code(), err.details()) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "denied by the servicer",
    )
    assert calls.wait_for("/gradfleet.v1.Coordinator/GetJob")[1] == "PERMISSION_DENIED"


def test_servicer_abort_mid_stream_keeps_its_code(stub, calls) -> None:
    """A stream the servicer aborts keeps that status."""
    request = pb.WatchJobRequest(job_id="abort")
    err = _rpc_error(lambda: list(stub.WatchJob(request, timeout=5)))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert calls.wait_for("/gradfleet.v1.Coordinator/WatchJob")[1] == "PERMISSION_DENIED"


def test_successful_unary_call_reports_ok_with_latency(stub, calls) -> None:
    """A successful call is reported as (full method name, "OK", positive seconds)."""
    assert stub.GetJob(pb.GetJobRequest(job_id="fine"), timeout=5).id == "fine"
    method, code, seconds = calls.wait_for("/gradfleet.v1.Coordinator/GetJob")
    assert (method, code) == ("/gradfleet.v1.Coordinator/GetJob", "OK")
    assert 0 < seconds < 5


def test_stream_latency_covers_the_whole_stream(stub, calls) -> None:
    """A stream's reported latency spans from the call to its last message."""
    events = stub.WatchJob(pb.WatchJobRequest(job_id="forever"), timeout=5)
    started = time.monotonic()
    for _ in range(20):  # each message takes >= 10 ms on the server
        next(events)
    events.cancel()
    _, code, seconds = calls.wait_for("/gradfleet.v1.Coordinator/WatchJob")
    assert code == "CANCELLED"
    assert 0.15 < seconds < time.monotonic() - started + 1


def test_stream_unary_errors_are_mapped(channel, calls) -> None:
    """A client-streaming handler's domain error reaches the client as its code."""
    total = channel.stream_unary("/test.Echo/Total")
    err = _rpc_error(lambda: total(iter([b"Job", b"NotFound"]), timeout=5))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert calls.wait_for("/test.Echo/Total")[1] == "NOT_FOUND"
    assert total(iter([b"o", b"k"]), timeout=5) == b"ok"


def test_stream_stream_errors_are_mapped(channel, calls) -> None:
    """A bidirectional handler's bug ends the stream with INTERNAL after the echoed message."""
    echo = channel.stream_stream("/test.Echo/Echo")
    received: list[bytes] = []
    err = _rpc_error(lambda: received.extend(echo(iter([b"bug"]), timeout=5)))
    assert received == [b"bug"]
    assert (err.code(), err.details()) == (grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
    assert calls.wait_for("/test.Echo/Echo")[1] == "INTERNAL"


def test_failing_callback_does_not_fail_the_call(caplog) -> None:
    """An on_call callback that raises is logged and the call still succeeds."""

    def broken(method: str, code: str, seconds: float) -> None:
        raise RuntimeError("metrics down")

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=2),
        interceptors=[ErrorMappingInterceptor(on_call=broken)],
    )
    pb_grpc.add_CoordinatorServicer_to_server(_Servicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as chan:
            job = pb_grpc.CoordinatorStub(chan).GetJob(pb.GetJobRequest(job_id="x"), timeout=5)
    finally:
        server.stop(grace=None)
    assert job.id == "x"
    assert any("on_call callback failed" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("method", ["GetJob", "WatchJob"])
def test_bytes_that_are_not_protobuf_get_invalid_argument(channel, calls, method) -> None:
    """Request bytes that do not parse are the client's mistake: INVALID_ARGUMENT, not INTERNAL."""
    path = f"/gradfleet.v1.Coordinator/{method}"
    streaming = method == "WatchJob"
    call = channel.unary_stream(path) if streaming else channel.unary_unary(path)

    def send() -> object:
        reply = call(b"\xff\xff\xff", timeout=5)  # a field tag whose varint never ends
        return list(reply) if streaming else reply

    err = _rpc_error(send)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid protobuf message" in err.details()
    assert calls.wait_for(path)[1] == "INVALID_ARGUMENT"
