"""Durable file replacement: what is renamed into place is on disk, and so is the rename.

Write a temporary file in the same folder, fsync it, rename it over the target, then fsync the
folder: without the last step a power cut can lose the rename although the data was synced.
A write the disk refuses (full, read-only, a file where a folder belongs) is a StateNotWritable
that names the file, the problem and the fix.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

from service.errors import StateNotWritable

log = logging.getLogger(__name__)

TEMP_GLOB = ".*.tmp"  # the temporary files of write_durably: `.NAME.PID.tmp`
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_NOT_ALLOWED = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})


def write_durably(path: Path, data: bytes, what: str = "") -> None:
    """Replace `path` (`what` it holds, for messages: "the checkpoint") with `data` atomically and
    durably; readers see the old file or the new one. StateNotWritable when the disk refuses it.

    The temporary file is `.NAME.PID.tmp` beside `path`; it is removed if the write fails.
    """
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(path.parent)
    except OSError as exc:
        raise write_error(path, exc, what) from exc


def fsync_dir(folder: Path) -> None:
    """Make the entries of `folder` (a rename, a new file) durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_error(path: Path, exc: OSError, what: str = "") -> StateNotWritable:
    """What the failed write of `path` (`what`, e.g. "the checkpoint") under --state-dir means and
    what to do about it; the message names `path`, never the temporary file the OS complained of."""
    blocker = next((p for p in reversed(path.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        problem = f"{blocker} is a file where a folder is expected"
        return unwritable(path, problem, what, fix=f"move {blocker} aside, or choose another --state-dir")
    name = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
    problem = f"{(exc.strerror or str(exc)).lower()} ({name})"
    return unwritable(
        path, problem, what, disk_full=exc.errno in _DISK_FULL, not_allowed=exc.errno in _NOT_ALLOWED
    )


def unwritable(
    path: Path,
    problem: str,
    what: str = "",
    *,
    disk_full: bool = False,
    not_allowed: bool = False,
    fix: str = "",
) -> StateNotWritable:
    """The error for `path` under --state-dir, which cannot be written because of `problem`."""
    if not fix and disk_full:
        fix = "free space on that disk, or move --state-dir to a disk with room"
    elif not fix and not_allowed:
        fix = (
            f"let the coordinator's user write to {path.parent} (its permissions, a read-only mount), "
            "or choose another --state-dir"
        )
    elif not fix:
        fix = "check that disk, or choose another --state-dir"
    subject = f"{what} {path}" if what else str(path)
    return StateNotWritable(f"cannot write {subject}: {problem}; {fix}", disk_full=disk_full)


def remove_temp_files(folder: Path) -> list[Path]:
    """Remove the temporary files a killed process left in `folder` (call only while no write can be
    in progress there: at start-up, with the state folder locked); returns them."""
    if not folder.is_dir():
        return []
    removed = sorted(folder.glob(TEMP_GLOB))
    for tmp in removed:
        tmp.unlink(missing_ok=True)
    if removed:
        log.info("removed %d unfinished temporary file(s) in %s", len(removed), folder)
    return removed
