"""Connecting to Ray, or starting the embedded one: a start that timed out is retried with nothing of
it left running, and a SIGTERM or SIGINT during the start is handled by the coordinator's own handler
(which stops what had started), whichever step of ray.init it comes in."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator

import ray

from service.config import ServerConfig
from service.descendants import ProcessKey, descendants, stop_new_descendants

log = logging.getLogger(__name__)

EMBEDDED_RAY_ATTEMPTS = 2
# Ray's fixed start-up waits: 30 s for the raylet to register, 30 s for the GCS to publish its port.
# A busy machine now and then misses one; a second start usually makes it.
RAY_START_TIMEOUTS = ("timed out during startup", "Timed out waiting for file")
HELD_SIGNALS = (signal.SIGTERM, signal.SIGINT)  # while ray.init connects (_signals_deferred_while_connecting)


def set_embedded_ray_environment() -> None:
    """Settings (unless already set) for a Ray that this process starts, read by every Ray process."""
    # On one machine and loopback, token auth would only depend on stray files in the home folder.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Ray runs its workers at nice 15, so the coordinator's gRPC threads (nice 0) took the CPU from a
    # training step whenever a client called, and a synchronous step waits for its slowest worker.
    # At equal priority, 50 clients polling once a second cost the job about nothing (bench/load.py).
    os.environ.setdefault("RAY_worker_niceness", "0")


def init_ray(config: ServerConfig) -> bool:
    """Connect to Ray; returns True if this process started (and so must stop) it."""
    if ray.is_initialized():
        return False
    if config.ray_address:
        _ray_init(address=config.ray_address, log_to_driver=False)
        return False
    set_embedded_ray_environment()
    log.warning(
        "the embedded Ray listens on all network interfaces (Ray cannot be kept on loopback); "
        "keep this machine's Ray ports away from untrusted networks"
    )
    for attempt in range(1, EMBEDDED_RAY_ATTEMPTS + 1):
        before = descendants()
        try:
            _ray_init(
                address="local", num_cpus=config.ray_num_cpus, include_dashboard=False, log_to_driver=False
            )
            break
        except BaseException as exc:  # a timeout, or a SIGTERM during start-up (StartupInterrupted)
            _abandon_ray_start(before)
            timed_out = isinstance(exc, Exception) and any(m in str(exc) for m in RAY_START_TIMEOUTS)
            if not timed_out or attempt == EMBEDDED_RAY_ATTEMPTS:
                raise
            log.warning("the embedded Ray did not start in time (%s); starting it again", exc)
    return True


def _ray_init(**options) -> None:
    """ray.init, keeping this process's SIGTERM handler: ray.init puts in its place one that calls
    sys.exit(15), which made a SIGTERM during start-up end `serve` with status 15."""
    ours = signal.getsignal(signal.SIGTERM)
    try:
        with _signals_deferred_while_connecting():
            ray.init(**options)
    except SystemExit as exc:
        if exc.code == signal.SIGTERM and callable(ours):
            ours(signal.SIGTERM, None)  # the SIGTERM came during ray.init: ours decides what it means
        raise
    finally:
        if ours is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, ours)
            _disarm_failure_alarm()


def _disarm_failure_alarm() -> None:
    """Cancel the alarm Ray's C++ failure-signal handler (abseil's) sets when a SIGTERM reaches it
    while ray.init runs: it expects the process to die within 3 s and otherwise aborts it (SIGABRT).
    Its handler passes the signal on to ours, which stops what started and exits 0 in its own time;
    after ray.init ours is the SIGTERM handler again. The coordinator sets no alarm of its own."""
    signal.alarm(0)
    signal.signal(signal.SIGALRM, signal.SIG_DFL)


@contextlib.contextmanager
def _signals_deferred_while_connecting() -> Iterator[None]:
    """Within it, SIGTERM and SIGINT wait while ray.init connects this process to Ray as a driver, and
    are handled as soon as it is connected (a fraction of a second later). Handled in the middle, they
    left Ray's C++ core worker half built, unknown to ray.shutdown(), and the process crashed on its
    way out (SIGSEGV). Ray has no hook around that step, so its `connect` is wrapped."""
    from ray._private import worker

    connect = getattr(worker, "connect", None)
    if connect is None or threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread, where ray.init then runs
        return

    def connect_then_handle_signals(*args, **kwargs):
        came: list[int] = []
        # A handler not set from Python (None) could not be put back: that signal is left alone.
        handlers = {sig: signal.getsignal(sig) for sig in HELD_SIGNALS if signal.getsignal(sig) is not None}
        for sig in handlers:
            signal.signal(sig, lambda signum, _frame: came.append(signum))
        try:
            with _without_ray_crash_reports():
                return connect(*args, **kwargs)
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            if came:
                _handle(came[0], handlers[came[0]])

    worker.connect = connect_then_handle_signals
    try:
        yield
    finally:
        worker.connect = connect


@contextlib.contextmanager
def _without_ray_crash_reports() -> Iterator[None]:
    """The core worker that connect() builds in this process installs abseil's failure-signal handler
    unless ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER (read from the environment when Ray is
    imported): a SIGTERM then printed a crash report (`*** SIGTERM received ... PC: ...`) before our
    own handler stopped the coordinator as planned. Set only around connect(), so Ray's own processes
    keep theirs; faulthandler (enabled by `serve`) reports a real crash of this process instead."""
    from ray._private import ray_constants

    before = ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER
    ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True
    try:
        yield
    finally:
        ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = before


def _handle(signum: int, handler) -> None:
    """What `handler` (as signal.signal returned it) does with `signum`."""
    if callable(handler):
        handler(signum, None)
    else:  # SIG_DFL or SIG_IGN
        signal.raise_signal(signum)


def _abandon_ray_start(before: set[ProcessKey]) -> None:
    """Stop what a failed ray.init started. ray.shutdown() alone misses the GCS, monitors and dashboard
    of a start that failed before Ray recorded them, and their ports stay open until they stop."""
    try:
        ray.shutdown()
    except Exception as exc:  # the processes are stopped by pid next in any case
        log.warning("ray.shutdown after a failed start: %s", exc)
    stopped = stop_new_descendants(before)
    if stopped:
        what = "1 process" if len(stopped) == 1 else f"{len(stopped)} processes"
        log.info("stopped %s of the failed Ray start (pids %s)", what, stopped)
