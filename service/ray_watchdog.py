"""A watch on the embedded Ray's raylet: without it the coordinator cannot run anything, and Ray's own
core worker ends the process some 30 s later without a word from gradfleet."""

from __future__ import annotations

import logging
import subprocess
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

CHECK_INTERVAL_S = 0.5


def embedded_raylet() -> subprocess.Popen | None:
    """The raylet process of the Ray this process started (None: no such Ray, or Ray keeps none)."""
    from ray._private import ray_constants, worker  # Ray publishes no API for its own processes

    node = getattr(worker, "_global_node", None)
    infos = getattr(node, "all_processes", {}).get(ray_constants.PROCESS_TYPE_RAYLET, [])
    return infos[0].process if infos else None


class RayletWatchdog:
    """Calls `on_death(pid, returncode)` once, from its own thread, if `raylet` exits before `stop()`."""

    def __init__(
        self,
        raylet: subprocess.Popen,
        on_death: Callable[[int, int], None],
        interval_s: float = CHECK_INTERVAL_S,
    ) -> None:
        self.pid = raylet.pid
        self._raylet = raylet
        self._on_death = on_death
        self._interval_s = interval_s
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="raylet-watchdog", daemon=True)

    def start(self) -> RayletWatchdog:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching (first, before a planned ray.shutdown stops the raylet)."""
        self._stopped.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _watch(self) -> None:
        while not self._stopped.wait(self._interval_s):
            returncode = self._raylet.poll()
            if returncode is not None and not self._stopped.is_set():
                self._on_death(self.pid, returncode)
                return


def kill_embedded_ray() -> None:
    """SIGKILL what is left of the embedded Ray's own processes (GCS, monitors) and wait for them: with
    the raylet gone they serve no one, and some take many seconds to notice it. Not ray.shutdown: that
    talks to the dead raylet through the core worker."""
    from ray._private import worker

    node = getattr(worker, "_global_node", None)
    if node is None:
        return
    try:
        node.kill_all_processes(check_alive=False, allow_graceful=False, wait=True)
    except Exception as exc:  # on the way out anyway: say so, do not stop the exit
        log.warning("could not stop the embedded Ray's processes: %s", exc)
