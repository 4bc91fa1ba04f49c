"""The job registry: job records in SQLite under the state folder, and change events for watchers.

Every change goes through `JobStore.update`, which persists the record and wakes watchers, so
what a client sees is always what is on disk (but for a job's final state that the disk refused,
shown all the same). The SQLite file itself, its schema and migrations: service/jobs_db.py.
"""

from __future__ import annotations

import collections
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp

from gradfleet.v1 import coordinator_pb2 as pb
from service.errors import InvalidRequest, JobNotFound, StateNotWritable
from service.jobs_db import prepare, store_error, unwritable_store
from service.spec import enum_names

log = logging.getLogger(__name__)

TERMINAL_STATES = frozenset({pb.SUCCEEDED, pb.FAILED, pb.CANCELLED})
EVENT_HISTORY = 256  # events kept per job for watchers that fall behind
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 50

# Spec fields the server itself rewrites after the submission (ScaleJob): a retry still matches.
_CHANGED_AFTER_SUBMIT = ("num_workers",)


def now_timestamp() -> Timestamp:
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp


class JobStore:
    """Thread-safe registry of jobs, persisted to `state_dir/jobs.sqlite3` (WAL mode)."""

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        path = state_dir / "jobs.sqlite3"
        db = None
        try:  # a damaged file fails only once read, past connect(): all of it is in here
            db = sqlite3.connect(path, check_same_thread=False)
            prepare(db)
            rows = db.execute("SELECT seq, id, record, cancel_requested FROM jobs ORDER BY seq").fetchall()
        except sqlite3.DatabaseError as exc:
            if db is not None:
                db.close()
            raise store_error(path, exc) from None
        self._db = db
        self._path = path
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._milestone = threading.Condition(self._lock)  # an event other than PROGRESS, or wake_all
        self._wakes = 0  # wake_all calls so far
        self._jobs: dict[str, pb.Job] = {}
        self._seq: dict[str, int] = {}
        self._events: dict[str, collections.deque] = {}
        self._state_since: dict[str, float] = {}  # time.time() the job entered its state (or was loaded)
        self._version = 0
        self._cancels: set[str] = set()  # jobs whose owner asked to cancel them (request_cancel)
        for seq, job_id, record, cancel in rows:
            try:
                job = pb.Job.FromString(record)
            except (DecodeError, TypeError):  # one bad row must not take the other jobs down with it
                log.error(
                    "job %s: its stored record cannot be read, so it is skipped; its row is left "
                    "untouched in %s",
                    job_id,
                    path,
                )
                continue
            self._jobs[job_id] = job
            self._seq[job_id] = seq
            self._events[job_id] = collections.deque(maxlen=EVENT_HISTORY)
            self._state_since[job_id] = time.time()
            if cancel:
                self._cancels.add(job_id)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def create(self, spec: pb.JobSpec, owner: str = "", message: str = "") -> tuple[pb.Job, bool]:
        """Create a QUEUED job owned by `owner`, showing `message`; returns (job, True). A spec whose
        request_id names a job `owner` already created returns (that job, False): a retried SubmitJob
        never makes a second job. Another owner's request ids are not looked at."""
        with self._lock:
            existing = self._by_request(spec, owner)
            if existing is not None:
                return _copy(existing), False
            job = pb.Job(
                id=uuid.uuid4().hex[:12],
                spec=spec,
                state=pb.QUEUED,
                created_at=now_timestamp(),
                owner=owner,
                message=message,
            )
            cursor = self._write(
                "INSERT INTO jobs (id, state, record, request_id, owner) VALUES (?, ?, ?, ?, ?)",
                (job.id, job.state, job.SerializeToString(), _request_id(spec), owner),
            )
            self._jobs[job.id] = job
            self._seq[job.id] = cursor.lastrowid
            self._events[job.id] = collections.deque(maxlen=EVENT_HISTORY)
            self._state_since[job.id] = time.time()
            self._record_event(job, pb.JobEvent.STATE)
            return _copy(job), True

    def find_request(self, spec: pb.JobSpec, owner: str = "") -> pb.Job | None:
        """The job `owner` already created for `spec.request_id`, or None."""
        with self._lock:
            job = self._by_request(spec, owner)
            return None if job is None else _copy(job)

    def _by_request(self, spec: pb.JobSpec, owner: str) -> pb.Job | None:
        request_id = _request_id(spec)
        if request_id is None:
            return None
        row = self._db.execute(
            "SELECT id FROM jobs WHERE owner = ? AND request_id = ?", (owner, request_id)
        ).fetchone()
        if row is None:
            return None
        job = self._jobs.get(row[0])
        if job is None:  # a row skipped at start-up as unreadable
            raise InvalidRequest(
                f"request_id: {request_id!r} was used for job {row[0]}, whose stored record cannot be "
                "read; send a new request id"
            )
        if not _same_submission(job.spec, spec):
            raise InvalidRequest(
                f"request_id: {request_id!r} was already used for job {job.id} with a different spec; "
                "send a new request id for a new job"
            )
        return job

    def get(self, job_id: str) -> pb.Job:
        with self._lock:
            return _copy(self._get(job_id))

    def _get(self, job_id: str) -> pb.Job:
        if not job_id:
            raise InvalidRequest("job_id: empty; pass the id that SubmitJob returned")
        try:
            return self._jobs[job_id]
        except KeyError:
            raise JobNotFound(job_id) from None

    def update(
        self,
        job_id: str,
        change: Callable[[pb.Job], None],
        kind=pb.JobEvent.PROGRESS,
        keep_unsaved: bool = False,
    ) -> pb.Job:
        """Apply `change` to the job, persist it and wake watchers; returns a copy.
        StateNotWritable when the disk refuses the write: the job stays as it was on disk, unless
        `keep_unsaved` (a job's final state, shown all the same: the next start finds the job as it
        was last written, and runs it again)."""
        with self._lock:
            job = _copy(self._get(job_id))
            before = job.state
            change(job)
            if job.state != before:
                kind = pb.JobEvent.STATE
                if job.state == pb.RUNNING and not job.HasField("started_at"):
                    job.started_at.CopyFrom(now_timestamp())
                if job.state in TERMINAL_STATES:
                    job.finished_at.CopyFrom(now_timestamp())
            try:
                self._write(
                    "UPDATE jobs SET state = ?, record = ? WHERE id = ?",
                    (job.state, job.SerializeToString(), job_id),
                )
            except StateNotWritable:
                if not keep_unsaved:
                    raise
                log.exception("job %s: %s is shown but not saved", job_id, pb.JobState.Name(job.state))
            if job.state != before:
                self._state_since[job_id] = time.time()
            self._jobs[job_id] = job
            self._record_event(job, kind)
            return _copy(job)

    def request_cancel(self, job_id: str) -> None:
        """Record, durably, that the job's owner asked to cancel it: a coordinator that stops or is
        killed before the job acts on it then ends it CANCELLED instead of resuming it."""
        with self._lock:
            self._get(job_id)
            if job_id not in self._cancels:
                self._write("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
                self._cancels.add(job_id)

    def cancel_requested(self, job_id: str) -> bool:
        """Whether request_cancel was called for the job (by this coordinator or an earlier one)."""
        with self._lock:
            return job_id in self._cancels

    def _write(self, statement: str, values: tuple) -> sqlite3.Cursor:
        """Run one writing statement and commit it; StateNotWritable (naming the store, the problem
        and the fix) when the disk refuses it, with nothing written."""
        try:
            cursor = self._db.execute(statement, values)
            self._db.commit()
        except sqlite3.OperationalError as exc:
            self._db.rollback()
            raise unwritable_store(self._path, exc) from exc
        return cursor

    def _record_event(self, job: pb.Job, kind) -> None:
        self._version += 1
        event = pb.JobEvent(kind=kind, job=job, time=now_timestamp())
        self._events[job.id].append((self._version, event))
        self._changed.notify_all()
        if kind != pb.JobEvent.PROGRESS:
            self._milestone.notify_all()

    def list(
        self, state: int = 0, page_size: int = 0, page_token: str = "", owner: str | None = None
    ) -> tuple[list[pb.Job], str]:
        """Jobs newest first, filtered by state (0 = all) and owner (None = all); returns
        (page, next_page_token)."""
        if state not in pb.JobState.values():  # an open enum: a client can send any number
            raise InvalidRequest(
                f"state: got {state}; must be one of {enum_names(pb.JobState.DESCRIPTOR)}, or unset for all"
            )
        size = page_size or DEFAULT_PAGE_SIZE
        if size > MAX_PAGE_SIZE:
            raise InvalidRequest(f"page_size: got {size}; must be at most {MAX_PAGE_SIZE}")
        with self._lock:
            before = self._page_start(page_token, owner)
            ordered = sorted(self._jobs, key=self._seq.__getitem__, reverse=True)
            chosen = [
                j
                for j in ordered
                if (not state or self._jobs[j].state == state)
                and (before is None or self._seq[j] < before)
                and (owner is None or self._jobs[j].owner == owner)
            ]
            page = chosen[:size]
            token = page[-1] if len(chosen) > size else ""
            return [_copy(self._jobs[j]) for j in page], token

    def _page_start(self, page_token: str, owner: str | None) -> int | None:
        """The position after which the page `page_token` asks for starts (None: the newest job).

        A token is the id of the last job of the previous page: it says nothing of other principals'
        jobs (a row number would give away how many there are). One naming a job the caller cannot
        see is refused like garbage, so tokens cannot probe for job ids. Call with the lock held."""
        if not page_token:
            return None
        job = self._jobs.get(page_token)
        if job is None or (owner is not None and job.owner != owner):
            raise InvalidRequest(
                "page_token: not a token this server issued; pass next_page_token from the previous page"
            )
        return self._seq[page_token]

    def unfinished(self) -> list[pb.Job]:
        """Jobs that were queued or running, oldest first (to re-queue after a restart)."""
        with self._lock:
            ids = sorted(self._jobs, key=self._seq.__getitem__)
            return [_copy(self._jobs[j]) for j in ids if self._jobs[j].state not in TERMINAL_STATES]

    def seconds_in_state(self, state: int) -> list[float]:
        """For each job now in `state`: seconds since it last entered it (at most since this store
        was opened: a restart re-queues what it finds)."""
        now = time.time()
        with self._lock:
            return [now - self._state_since[j] for j, job in self._jobs.items() if job.state == state]

    def counts_by_state(self) -> dict[int, int]:
        with self._lock:
            counts = collections.Counter(job.state for job in self._jobs.values())
        return {state: counts.get(state, 0) for state in pb.JobState.values() if state}

    def snapshot(self, job_id: str) -> tuple[int, pb.Job]:
        """The current event version and a copy of the job: where a new watcher starts."""
        with self._lock:
            return self._version, _copy(self._get(job_id))

    def events_after(self, job_id: str, version: int, timeout_s: float) -> list[tuple[int, pb.JobEvent]]:
        """Events of the job newer than `version`, waiting up to `timeout_s` for one to arrive."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            self._get(job_id)
            while True:
                fresh = _newer_than(self._events[job_id], version)
                remaining = deadline - time.monotonic()
                if fresh or remaining <= 0:
                    return fresh
                self._changed.wait(remaining)

    def wait_for_milestone(self, job_id: str, version: int, timeout_s: float) -> None:
        """Wait up to `timeout_s` for an event of the job other than PROGRESS newer than `version`,
        or a wake_all: PROGRESS events, and other jobs' events, do not end this wait."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            wakes = self._wakes
            while self._wakes == wakes:
                fresh = _newer_than(self._events.get(job_id, ()), version)
                remaining = deadline - time.monotonic()
                if remaining <= 0 or any(e.kind != pb.JobEvent.PROGRESS for _, e in fresh):
                    return
                self._milestone.wait(remaining)

    def wake_all(self) -> None:
        """Wake every waiting watcher (a client went away, or the server is stopping)."""
        with self._lock:
            self._wakes += 1
            self._changed.notify_all()
            self._milestone.notify_all()


def _newer_than(events: collections.deque, version: int) -> list[tuple[int, pb.JobEvent]]:
    """The events after `version`, oldest first, read from the newest end: every event wakes every
    watcher, so each must cost it the few new events, not the whole history."""
    fresh = []
    for item in reversed(events):
        if item[0] <= version:
            break
        fresh.append(item)
    fresh.reverse()
    return fresh


def _request_id(spec: pb.JobSpec) -> str | None:
    return spec.request_id if spec.HasField("request_id") else None


def _same_submission(stored: pb.JobSpec, submitted: pb.JobSpec) -> bool:
    """Whether `submitted` is the spec `stored` was created from, before the server changed it."""
    a, b = pb.JobSpec(), pb.JobSpec()
    a.CopyFrom(stored)
    b.CopyFrom(submitted)
    for name in _CHANGED_AFTER_SUBMIT:
        a.ClearField(name)
        b.ClearField(name)
    return a == b


def _copy(job: pb.Job) -> pb.Job:
    copy = pb.Job()
    copy.CopyFrom(job)
    return copy
