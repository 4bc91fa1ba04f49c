"""The processes this process started: snapshot them, and stop those that appeared since a snapshot.

A failed embedded-Ray start leaves its GCS, monitor and log monitor running with their ports open, and
ray.shutdown() does not know them (the failed ray.init never recorded its node). Processes are named
by (pid, start time), so a pid the system reused for someone else's process is never signalled.
"""

from __future__ import annotations

import contextlib
import logging

import ray  # noqa: F401  first: Ray bundles psutil (ray/thirdparty_files) and puts it on sys.path

# isort: split
import psutil

log = logging.getLogger(__name__)

STOP_GRACE_S = 5.0  # SIGTERM, then SIGKILL for what is still there after this

ProcessKey = tuple[int, float]  # (pid, create time)


def _key(process: psutil.Process) -> ProcessKey:
    return process.pid, process.create_time()


def descendants() -> set[ProcessKey]:
    """This process's children, grandchildren and so on, as they are now."""
    keys: set[ProcessKey] = set()
    for child in psutil.Process().children(recursive=True):
        try:
            keys.add(_key(child))
        except psutil.NoSuchProcess:
            continue
    return keys


def stop_new_descendants(before: set[ProcessKey], grace_s: float = STOP_GRACE_S) -> list[int]:
    """Terminate this process's descendants that are not in `before` (then kill those that outlive
    `grace_s`) and wait for them; returns their pids. Descendants orphaned before the call (their
    parent died and they were re-parented) are no longer ours to find."""
    fresh: list[psutil.Process] = []
    for child in psutil.Process().children(recursive=True):  # listed first: a parent's death re-parents
        try:
            if _key(child) not in before:
                fresh.append(child)
        except psutil.NoSuchProcess:
            continue
    for process in fresh:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.terminate()
    _, alive = psutil.wait_procs(fresh, timeout=grace_s)  # reaps our own children
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    _, stuck = psutil.wait_procs(alive, timeout=grace_s)
    if stuck:
        log.warning("processes %s did not stop after SIGKILL", sorted(p.pid for p in stuck))
    return [p.pid for p in fresh]
