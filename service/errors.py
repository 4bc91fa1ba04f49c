"""Domain errors. Each carries the gRPC status code it maps to; the server interceptor does the mapping."""

from __future__ import annotations

import grpc

QUOTED_ID_CHARS = 64  # of an id quoted in a message: a mistyped megabyte must not come back whole


def quote_id(job_id: str) -> str:
    """`job_id` quoted for a message, shortened to its first QUOTED_ID_CHARS characters."""
    if len(job_id) <= QUOTED_ID_CHARS:
        return repr(job_id)
    return f"{job_id[:QUOTED_ID_CHARS]!r}... ({len(job_id)} characters)"


class GradfleetError(Exception):
    """Base of all errors a client may see; `code` is the gRPC status it becomes."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __reduce__(self):  # stays picklable across Ray process boundaries
        return (type(self), (self.message,))


class InvalidSpec(GradfleetError):
    """A job spec field has a value that is not allowed; the message names the field path."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}" if field else problem)
        self.field = field
        self.problem = problem

    def __reduce__(self):
        return (type(self), (self.field, self.problem))


class InvalidRequest(GradfleetError):
    """A request (not a spec) is malformed: empty job id, bad page token."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class JobNotFound(GradfleetError):
    code = grpc.StatusCode.NOT_FOUND

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {quote_id(job_id)} not found; `gradfleet list` shows the known jobs")
        self.job_id = job_id

    def __reduce__(self):
        return (type(self), (self.job_id,))


class JobNotReady(GradfleetError):
    """The job is not in a state that allows the request (e.g. download before it succeeded)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class LimitExceeded(GradfleetError):
    """A configured cap (queue length, streams, dataset size) is reached; the message names it."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(GradfleetError):
    """The coordinator is shutting down; the same request may succeed once it is back."""

    code = grpc.StatusCode.UNAVAILABLE


class Unauthenticated(GradfleetError):
    """No bearer token, or one the server does not know."""

    code = grpc.StatusCode.UNAUTHENTICATED


class TrainingFailed(GradfleetError):
    """Training could not go on; the message says why and what to change."""

    code = grpc.StatusCode.INTERNAL


class StateNotWritable(GradfleetError):
    """The state folder (job store, checkpoints, models) refused a write; the message names the file,
    the problem and the fix. A full disk is RESOURCE_EXHAUSTED, anything else UNAVAILABLE: the same
    request succeeds once the operator has fixed the disk."""

    code = grpc.StatusCode.UNAVAILABLE

    def __init__(self, message: str, disk_full: bool = False) -> None:
        super().__init__(message)
        self.disk_full = disk_full
        if disk_full:
            self.code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __reduce__(self):
        return (type(self), (self.message, self.disk_full))
