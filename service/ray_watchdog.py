"""Watches on the Ray the coordinator runs on. Without its raylet or its GCS the coordinator can
neither run nor checkpoint anything, and Ray's own core worker ends the process 30 to 60 s later
without a word from gradfleet (jobs meanwhile sit in 'preparing data and workers').

- The embedded Ray (started by this process): its raylet and GCS processes are watched; the first to
  die is reported at once (`RayWatchdog`).
- A cluster's Ray (--ray-address): its GCS may be restarted elsewhere (GCS fault tolerance) and Ray
  reconnects to it, so a GCS that stops answering is only logged, and logged again when it is back
  (`GcsProbe`).
"""

from __future__ import annotations

import logging
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Self  # Python 3.11; annotations are not evaluated at run time

log = logging.getLogger(__name__)

CHECK_INTERVAL_S = 0.5
GCS_PROBE_INTERVAL_S = 2.0  # a TCP connect each time; a GCS answers it in milliseconds
GCS_RECONNECT_S = 60  # Ray's gcs_rpc_server_reconnect_timeout_s default: it ends the process after


def embedded_processes() -> dict[str, subprocess.Popen]:
    """{"raylet": ..., "GCS": ...}: the processes of the Ray this process started that the coordinator
    cannot do without (empty, or one missing: no such Ray, or Ray keeps none)."""
    from ray._private import ray_constants, worker  # Ray publishes no API for its own processes

    node = getattr(worker, "_global_node", None)
    processes = getattr(node, "all_processes", {})
    found = {}
    for name, kind in (
        ("raylet", ray_constants.PROCESS_TYPE_RAYLET),
        ("GCS", ray_constants.PROCESS_TYPE_GCS_SERVER),
    ):
        infos = processes.get(kind, [])
        if infos:
            found[name] = infos[0].process
    return found


class _PeriodicCheck:
    """Runs `_check()` every `interval_s` from its own daemon thread until `stop()`, or until
    `_check()` returns True."""

    def __init__(self, name: str, interval_s: float) -> None:
        self._interval_s = interval_s
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=name, daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop checking (first, before a planned ray.shutdown stops what is watched)."""
        self._stopped.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _watch(self) -> None:
        while not self._stopped.wait(self._interval_s):
            if self._check():
                return

    def _check(self) -> bool:
        raise NotImplementedError


class RayWatchdog(_PeriodicCheck):
    """Calls `on_death(name, pid, returncode)` once, from its own thread, when the first of `processes`
    (by name) exits before `stop()`."""

    def __init__(
        self,
        processes: dict[str, subprocess.Popen],
        on_death: Callable[[str, int, int], None],
        interval_s: float = CHECK_INTERVAL_S,
    ) -> None:
        super().__init__("ray-watchdog", interval_s)
        self._processes = dict(processes)
        self._on_death = on_death

    def _check(self) -> bool:
        for name, process in self._processes.items():
            returncode = process.poll()
            if returncode is not None and not self._stopped.is_set():
                self._on_death(name, process.pid, returncode)
                return True
        return False


class GcsProbe(_PeriodicCheck):
    """Logs an error when the GCS at `address` (HOST:PORT) stops taking connections, and a warning
    when it takes them again; checks every `interval_s` from its own thread until `stop()`."""

    def __init__(self, address: str, interval_s: float = GCS_PROBE_INTERVAL_S) -> None:
        super().__init__("gcs-probe", interval_s)
        self.address = address
        host, _, port = address.rpartition(":")
        self._where = (host.strip("[]"), int(port))
        self._lost_at: float | None = None  # time.monotonic() when it stopped answering

    def _check(self) -> bool:
        self.check()
        return False

    def check(self) -> None:
        """Probe once; log a change."""
        try:
            socket.create_connection(self._where, timeout=self._interval_s).close()
        except OSError as exc:
            if self._lost_at is None:
                self._lost_at = time.monotonic()
                reason = exc.strerror or str(exc) or type(exc).__name__
                log.error(
                    "the Ray cluster's GCS at %s does not answer (%s): no job can start, train or "
                    "checkpoint; unless it is back within about %d s Ray ends this coordinator (restart it "
                    "and its jobs resume from their checkpoints)",
                    self.address,
                    reason,
                    GCS_RECONNECT_S,
                )
            return
        if self._lost_at is not None:
            log.warning(
                "the Ray cluster's GCS at %s answers again, after %.0f s",
                self.address,
                time.monotonic() - self._lost_at,
            )
            self._lost_at = None


def kill_embedded_ray() -> None:
    """SIGKILL what is left of the embedded Ray's own processes (raylet, GCS, monitors) and wait for
    them: with the raylet or the GCS gone they serve no one, and some take many seconds to notice it.
    Not ray.shutdown: that talks to the dead processes through the core worker."""
    from ray._private import worker

    node = getattr(worker, "_global_node", None)
    if node is None:
        return
    try:
        node.kill_all_processes(check_alive=False, allow_graceful=False, wait=True)
    except Exception as exc:  # on the way out anyway: say so, do not stop the exit
        log.warning("could not stop the embedded Ray's processes: %s", exc)
