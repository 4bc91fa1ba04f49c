"""The job store's SQLite file: its schema and migrations, opening it, and what a write the disk
refuses means."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from google.protobuf.message import DecodeError

from gradfleet.v1 import coordinator_pb2 as pb
from service.durable import unwritable
from service.errors import StateNotWritable
from service.startup import StartupError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    state INTEGER NOT NULL,
    record BLOB NOT NULL
)
"""
# Idempotent submission: one job per principal and client request id (NULLs, jobs without one,
# never clash). Scoped by owner so that another principal's request id neither finds nor names a job.
_MIGRATIONS = (
    ("request_id", "ALTER TABLE jobs ADD COLUMN request_id TEXT"),
    ("owner", "ALTER TABLE jobs ADD COLUMN owner TEXT"),
    # A user's CancelJob, on disk before the runner acts on it (see JobStore.request_cancel).
    ("cancel_requested", "ALTER TABLE jobs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0"),
)
_OLD_REQUEST_INDEX = "DROP INDEX IF EXISTS jobs_request_id"  # request ids were global before
_REQUEST_INDEX = "CREATE UNIQUE INDEX IF NOT EXISTS jobs_owner_request_id ON jobs (owner, request_id)"


def prepare(db: sqlite3.Connection) -> None:
    """WAL mode, the table and its migrations, in one transaction: a crash part-way through a
    migration leaves the old schema, which the next start migrates again."""
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute(_SCHEMA)
        columns = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
        for column, statement in _MIGRATIONS:
            if column not in columns:
                db.execute(statement)
        if "owner" not in columns:
            _fill_owners(db)
        db.execute(_OLD_REQUEST_INDEX)
        db.execute(_REQUEST_INDEX)
        db.commit()
    except BaseException:
        db.rollback()
        raise


def _fill_owners(db: sqlite3.Connection) -> None:
    """Copy each job's owner from its record into the new column. An unreadable record keeps NULL,
    so its request id matches no principal's retry (whose it was cannot be told)."""
    rows = db.execute("SELECT seq, record FROM jobs").fetchall()
    for seq, record in rows:
        try:
            owner = pb.Job.FromString(record).owner
        except (DecodeError, TypeError):
            continue
        db.execute("UPDATE jobs SET owner = ? WHERE seq = ?", (owner, seq))


_SQLITE_FULL, _SQLITE_READONLY, _SQLITE_PERM = 13, 8, 3  # result codes (the low byte of extended ones)


def unwritable_store(path: Path, exc: sqlite3.OperationalError) -> StateNotWritable:
    """What a write of the job store at `path` that sqlite refused means, and what to do."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    return unwritable(
        path,
        str(exc),
        "the job store",
        disk_full=code == _SQLITE_FULL,
        not_allowed=code in (_SQLITE_READONLY, _SQLITE_PERM),
    )


def store_error(path: Path, exc: sqlite3.DatabaseError) -> StartupError:
    if isinstance(exc, sqlite3.OperationalError):  # cannot open, read-only, locked: the file may be fine
        return StartupError(
            f"cannot open the job store {path} ({exc}); check its permissions, or choose another --state-dir"
        )
    return StartupError(
        f"the job store {path} is not a readable database ({exc}); move it aside (the coordinator then "
        "starts with no jobs) or restore it from a backup, or choose another --state-dir"
    )
