"""A small synchronous client for the coordinator; server errors surface as grpc.RpcError."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gradfleet.v1 import coordinator_pb2 as pb
from gradfleet.v1 import coordinator_pb2_grpc as pb_grpc
from service.file_modes import replacement_mode

DEFAULT_ADDRESS = "127.0.0.1:50051"
DEFAULT_PORT = 50051


def with_default_port(address: str) -> str:
    """`address` with the coordinator's port added when it names none: gRPC would dial 443.
    Bracketed IPv6 (`[::1]`) counts; other forms with a colon (`host:port`, `unix:PATH`) stay."""
    if (address.startswith("[") and address.endswith("]")) or (address and ":" not in address):
        return f"{address}:{DEFAULT_PORT}"
    return address


MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # a JobEvent carries a whole Job; leave plenty of room
# Submissions retried on these codes: the server may or may not have seen the request, and the
# request id makes a second attempt return the job the first one created.
_RETRY_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
SUBMIT_RETRY_DELAYS_S = (0.25, 0.5, 1.0, 2.0)  # about 4 s before giving up
# SubmitJob's trailing metadata, "true" when the request id had already made the job it returns
# (documented on SubmitJob in protos/gradfleet/v1/coordinator.proto).
EXISTING_JOB_METADATA = "gradfleet-existing-job"


@dataclass(frozen=True)
class TlsOptions:
    """PEM files for a TLS channel: `ca` to trust (None: the system roots), and a client
    certificate and key for servers that require one (mTLS)."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        if (self.cert is None) != (self.key is None):
            raise ValueError("--cert and --key go together; give both or neither")
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes() if self.ca else None,
            private_key=self.key.read_bytes() if self.key else None,
            certificate_chain=self.cert.read_bytes() if self.cert else None,
        )


class DownloadError(Exception):
    """The model stream was inconsistent (gaps, overlaps, wrong size); nothing was written."""


class CoordinatorClient:
    """Typed calls to the Coordinator service; `timeout` (s) bounds each unary call.

    `tls` makes the channel TLS; `token` is sent as `authorization: Bearer <token>` on every call.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        timeout: float = 30.0,
        tls: TlsOptions | None = None,
        token: str | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self.address = with_default_port(address)
        self.timeout = timeout
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # Its own connection, not one shared with other clients in the process: the server
            # counts WatchJob streams per connection.
            ("grpc.use_local_subchannel_pool", 1),
        ]
        self._options = options
        self._credentials = tls.credentials() if tls is not None else None
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._open_channel()

    def _open_channel(self) -> None:
        if self._credentials is None:
            self._channel = grpc.insecure_channel(self.address, options=self._options)
        else:
            self._channel = grpc.secure_channel(self.address, self._credentials, options=self._options)
        self._stub = pb_grpc.CoordinatorStub(self._channel)

    def reconnect(self) -> None:
        """Replace the channel with a fresh one: after the server went away, the old one waits out
        gRPC's reconnect backoff (growing to minutes) before it tries again."""
        self._channel.close()
        self._open_channel()

    def __enter__(self) -> CoordinatorClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def submit(self, spec: pb.JobSpec, *, retry_delays: Iterable[float] = SUBMIT_RETRY_DELAYS_S) -> pb.Job:
        """Submit, retrying while the server is unreachable; every attempt carries the same
        request id (a fresh UUID unless the spec has one), so at most one job is created."""
        return self.submit_with_status(spec, retry_delays=retry_delays)[0]

    def submit_with_status(
        self, spec: pb.JobSpec, *, retry_delays: Iterable[float] = SUBMIT_RETRY_DELAYS_S
    ) -> tuple[pb.Job, bool]:
        """`submit`, returning (job, created): created is False when the server answered with the job
        an earlier submission of the spec's request id made (SubmitJob's trailing metadata says so).
        With a generated request id only this call's own attempts can have made the job: created.
        With the spec's own, a retry whose lost first attempt made the job also reads False."""
        generated = not spec.HasField("request_id")
        if generated:
            spec = _with_request_id(spec, uuid.uuid4().hex)
        errors: list[grpc.RpcError] = []
        for delay in (*retry_delays, None):
            try:
                job, call = self._stub.SubmitJob.with_call(
                    spec, timeout=self.timeout, metadata=self._metadata
                )
                existing = any(
                    key == EXISTING_JOB_METADATA and value == "true"
                    for key, value in call.trailing_metadata() or ()
                )
                return job, generated or not existing
            except grpc.RpcError as exc:
                if exc.code() not in _RETRY_CODES:
                    raise
                errors.append(exc)
            if delay is not None:
                time.sleep(delay)
        # The first attempt's error, when the last failed the same way: that attempt tried every
        # address in order, as a single call (list) does. Later ones report whichever address the
        # subchannels' backoff timers failed last, so a TLS mismatch on 127.0.0.1 could read as
        # "[::1] Connection refused".
        first, last = errors[0], errors[-1]
        raise first if first.code() == last.code() else last

    def get(self, job_id: str) -> pb.Job:
        return self._stub.GetJob(
            pb.GetJobRequest(job_id=job_id), timeout=self.timeout, metadata=self._metadata
        )

    def list(self, state: int | str | None = None, page_size: int = 50) -> list[pb.Job]:
        """All jobs (newest first), optionally only those in `state` (a JobState or its name)."""
        state_value = pb.JobState.Value(state) if isinstance(state, str) else (state or 0)
        request = pb.ListJobsRequest(state=state_value, page_size=page_size)
        jobs: list[pb.Job] = []
        while True:
            response = self._stub.ListJobs(request, timeout=self.timeout, metadata=self._metadata)
            jobs.extend(response.jobs)
            if not response.next_page_token:
                return jobs
            request.page_token = response.next_page_token

    def scale(self, job_id: str, num_workers: int) -> pb.Job:
        request = pb.ScaleJobRequest(job_id=job_id, num_workers=num_workers)
        return self._stub.ScaleJob(request, timeout=self.timeout, metadata=self._metadata)

    def cancel(self, job_id: str) -> pb.Job:
        return self._stub.CancelJob(
            pb.CancelJobRequest(job_id=job_id), timeout=self.timeout, metadata=self._metadata
        )

    def watch(self, job_id: str) -> Iterator[pb.JobEvent]:
        """The job's events until it reaches a terminal state; no deadline (jobs run for long)."""
        return self._stub.WatchJob(pb.WatchJobRequest(job_id=job_id), metadata=self._metadata)

    def download(self, job_id: str, path: str | Path) -> int:
        """Stream the trained model into `path` atomically; returns its size in bytes."""
        chunks = self._stub.DownloadModel(pb.DownloadModelRequest(job_id=job_id), metadata=self._metadata)
        return write_chunks(chunks, Path(path))

    def download_to(self, job_id: str, out: BinaryIO) -> int:
        """Stream the trained model into the binary stream `out` (standard output) as it arrives;
        returns its size. Unlike `download` it cannot take back bytes written before an error."""
        chunks = self._stub.DownloadModel(pb.DownloadModelRequest(job_id=job_id), metadata=self._metadata)
        return _copy_chunks(chunks, out)

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Block until the server's health service says SERVING; TimeoutError after `timeout` s."""
        health = health_pb2_grpc.HealthStub(self._channel)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                reply = health.Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=left, wait_for_ready=True
                )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError as exc:
                if exc.code() not in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                ):
                    raise
            time.sleep(min(0.1, max(deadline - time.monotonic(), 0)))
        raise TimeoutError(f"the coordinator at {self.address} was not ready within {timeout:g} s")


def _with_request_id(spec: pb.JobSpec, request_id: str) -> pb.JobSpec:
    copy = pb.JobSpec()
    copy.CopyFrom(spec)
    copy.request_id = request_id
    return copy


def write_chunks(chunks: Iterable[pb.Chunk], path: Path) -> int:
    """Write a chunk stream to a temp file beside `path`, check it, then rename it into place.

    On any error (a gap, an overlap, a size mismatch, a broken stream) the temp file is removed
    and `path` is left as it was.
    """
    if not path.parent.is_dir():  # say so before mkstemp names its temporary file instead
        raise FileNotFoundError(f"cannot write {path}: the folder {path.parent} does not exist")
    try:
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    except OSError as exc:  # the new file goes beside `path` first: say that is what failed
        raise _naming(path, exc, f"cannot create a file in {path.parent}") from None
    try:
        os.fchmod(fd, replacement_mode(path))  # mkstemp makes it 0600; a model is a plain file
        with os.fdopen(fd, "wb") as out:
            size = _copy_chunks(chunks, out)
        try:
            os.replace(tmp_name, path)
        except OSError as exc:
            raise _naming(path, exc) from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    return size


def _naming(path: Path, exc: OSError, what: str = "") -> OSError:
    """`exc` reworded to name `path` (and `what` failed): its own message names the temporary file,
    which the user never chose (`Permission denied: '/proc/.version.o4eatrxt.part'`)."""
    reason = f"{what} ({exc.strerror or exc})" if what else exc.strerror or str(exc)
    error = OSError(f"cannot write {path}: {reason}")
    error.errno = exc.errno
    return error


def _copy_chunks(chunks: Iterable[pb.Chunk], out: BinaryIO) -> int:
    written, total = 0, None
    for chunk in chunks:
        if chunk.offset != written:
            raise DownloadError(f"chunk at offset {chunk.offset}, expected {written}")
        if total is not None and chunk.total_size != total:
            raise DownloadError(f"total size changed from {total} to {chunk.total_size}")
        total = chunk.total_size
        _write_all(out, chunk.data)
        written += len(chunk.data)
    if total is None:
        raise DownloadError("the server sent no data")
    if written != total:
        raise DownloadError(f"got {written} bytes, expected {total}")
    return written


def _write_all(out: BinaryIO, data: bytes) -> None:
    """Write all of `data`: Python 3.11's BufferedWriter on a pipe returns a short count (64 KiB)
    when the reader goes away mid-write; the next write then raises BrokenPipeError."""
    view = memoryview(data)
    while view:
        count = out.write(view)
        if not count:  # None (a non-blocking stream that would block) or 0: no progress to wait for
            raise OSError(f"short write: {len(view):,} bytes of the model could not be written")
        view = view[count:]
