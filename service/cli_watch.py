"""Following a job from the command line: the watch loop and how its events are shown.

`watch_job` follows one job's event stream to its end, reconnecting with backoff when the stream
breaks (a coordinator restart, a dropped network), and raises `WatchLost` when reconnecting does not
help; when the server has no WatchJob stream to spare (RESOURCE_EXHAUSTED) it polls GetJob instead
(`poll_job`). `Renderer` writes the events, as a progress bar redrawn in place on a terminal
or as one line per event elsewhere.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from typing import TextIO

import grpc

from gradfleet.v1 import coordinator_pb2 as pb
from service import progress
from service.client import CoordinatorClient

# Codes a broken watch stream shows when the server restarts or the network drops.
_RECONNECT_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.ABORTED}
)
RECONNECT_BACKOFF_S = (0.5, 1.0, 2.0)  # then every 2 s: a restarted coordinator is found within 2 s
RECONNECT_WINDOW_S = 60.0  # a coordinator restart (Ray included) takes well under this
POLL_INTERVAL_S = 1.0  # GetJob this often without a stream: the rate a stream batches PROGRESS at


def reconnect_delays(window_s: float) -> tuple[float, ...]:
    """Sleeps between reconnect attempts: the backoff, then its last value, adding up to `window_s`."""
    delays: list[float] = []
    total = 0.0
    while (left := window_s - total) > 0:
        delays.append(min(RECONNECT_BACKOFF_S[min(len(delays), len(RECONNECT_BACKOFF_S) - 1)], left))
        total += delays[-1]
    return tuple(delays)


_LOG = logging.getLogger(__name__)


class WatchLost(Exception):
    """The watch stream broke and reconnecting did not help."""


def _to_stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def watch_job(
    client: CoordinatorClient,
    job_id: str,
    renderer: Renderer | None,
    *,
    delays: Sequence[float] = reconnect_delays(RECONNECT_WINDOW_S),
    sleep: Callable[[float], None] = time.sleep,
    notice: Callable[[str], None] = _to_stderr,
) -> pb.Job:
    """Follow `job_id` until a terminal state, reconnecting with backoff if the stream breaks (on a
    fresh channel each time, so gRPC's own growing reconnect backoff never delays finding the server).
    When the server refuses a stream for its WatchJob limit, it says so once through `notice` and
    polls GetJob instead, showing the same kinds of events.

    Returns the job as of its last event; raises WatchLost when every reconnect failed, and
    grpc.RpcError when the first connection fails or for errors reconnecting cannot fix.
    """
    last: pb.Job | None = None
    failures = 0
    while True:
        try:
            job, count, reason = _stream_once(client, job_id, renderer, connected=last is not None)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise
            if renderer:
                renderer.end_line()
            notice(
                f"following job {job_id} by polling GetJob every {POLL_INTERVAL_S:g} s: the server has no "
                f"WatchJob stream to spare ({exc.details()})"
            )
            return poll_job(client, job_id, renderer, last, delays=delays, sleep=sleep)
        last = job or last
        if last is not None and last.state in progress.TERMINAL_STATES:
            if renderer:
                renderer.end_line()
            return last
        if count > 1:  # the first event only restates the job: count later ones as progress
            failures = 0
        if failures == len(delays):
            raise WatchLost(
                f"lost the watch stream of job {job_id} ({reason}); gave up after {sum(delays):g} s "
                "of reconnecting (--reconnect-s sets how long)"
            )
        _LOG.debug("watch stream broke: %s", reason)
        if renderer:
            wait, left = delays[failures], sum(delays[failures:])
            renderer.note(
                f"connection lost ({reason}); reconnecting in {wait:g} s (trying for {left:g} s more)"
            )
        sleep(delays[failures])
        client.reconnect()
        failures += 1


def poll_job(
    client: CoordinatorClient,
    job_id: str,
    renderer: Renderer | None,
    last: pb.Job | None,
    *,
    delays: Sequence[float],
    sleep: Callable[[float], None],
) -> pb.Job:
    """Follow `job_id` with GetJob every POLL_INTERVAL_S until a terminal state, showing what changed
    since `last` as the events a stream would have sent; a failed call is retried as a broken stream
    is (`delays`), and WatchLost raised when that does not help."""
    failures = 0
    while True:
        try:
            job = client.get(job_id)
        except grpc.RpcError as exc:
            if exc.code() not in _RECONNECT_CODES:
                raise
            if failures == len(delays):
                raise WatchLost(
                    f"lost job {job_id} ({exc.code().name}: {exc.details()}); gave up after "
                    f"{sum(delays):g} s of retrying GetJob (--reconnect-s sets how long)"
                ) from None
            if renderer:
                renderer.note(
                    f"GetJob failed ({exc.code().name}: {exc.details()}); retrying in {delays[failures]:g} s"
                )
            sleep(delays[failures])
            client.reconnect()
            failures += 1
            continue
        failures = 0
        if renderer:
            for event in events_between(last, job):
                renderer.show(event)
        last = job
        if job.state in progress.TERMINAL_STATES:
            if renderer:
                renderer.end_line()
            return job
        sleep(POLL_INTERVAL_S)


def events_between(before: pb.Job | None, after: pb.Job) -> list[pb.JobEvent]:
    """The events a watch stream would have sent for the change from `before` to `after` (two GetJob
    answers), in the order the renderer wants them: what happened, then where training stands."""
    if before is None:
        return [pb.JobEvent(kind=pb.JobEvent.STATE, job=after)]  # as a stream's first event
    was, now = before.progress, after.progress
    kinds = []
    if now.rollbacks > was.rollbacks:
        kinds.append(pb.JobEvent.ROLLBACK)
    elif (now.worker_restarts, now.server_restarts) > (was.worker_restarts, was.server_restarts):
        kinds.append(pb.JobEvent.RECOVERED)
    elif (after.state, after.message) != (before.state, before.message):
        kinds.append(pb.JobEvent.STATE)
    if now.checkpoint_step != was.checkpoint_step and now.checkpoint_step:
        kinds.append(pb.JobEvent.CHECKPOINT)
    if now.has_eval and _eval_figures(now) != _eval_figures(was):
        kinds.append(pb.JobEvent.EVAL)
    if now.step != was.step:
        kinds.append(pb.JobEvent.PROGRESS)
    return [pb.JobEvent(kind=kind, job=after) for kind in kinds]


def _eval_figures(p: pb.Progress) -> tuple[str, ...]:
    # As text: NaN (no accuracy for a regression) never equals itself.
    return tuple(repr(v) for v in (p.eval_loss, p.eval_accuracy, p.eval_label_accuracy, p.eval_mse))


def _stream_once(
    client: CoordinatorClient, job_id: str, renderer: Renderer | None, *, connected: bool
) -> tuple[pb.Job | None, int, str]:
    """Show one watch stream's events; returns (last job, event count, why the stream ended)."""
    job, count = None, 0
    try:
        for event in client.watch(job_id):
            job, count = event.job, count + 1
            if renderer:
                renderer.show(event)
    except grpc.RpcError as exc:
        if not (connected or count) or exc.code() not in _RECONNECT_CODES:
            raise  # never connected, or an error that reconnecting cannot fix
        return job, count, f"{exc.code().name}: {exc.details()}"
    return job, count, "the stream ended early"


class Renderer:
    """Writes watch events: on a TTY a progress bar redrawn in place, with STATE and EVAL
    events as lines above it; otherwise one line per event, PROGRESS at most every ~2 s.

    `columns` gives the terminal's width, asked at each redraw (the window may be resized): a bar
    wider than the terminal would wrap, and each `\r` redraw would leave a stale line behind."""

    def __init__(
        self,
        out: TextIO,
        *,
        tty: bool,
        clock: Callable[[], float] = time.monotonic,
        columns: Callable[[], int] = lambda: shutil.get_terminal_size().columns,
    ) -> None:
        self.out, self.tty, self.clock, self.columns = out, tty, clock, columns
        self._throttle = progress.EventThrottle()
        self._bar_len = 0  # length of the bar line on screen; 0 = none drawn

    def show(self, event: pb.JobEvent) -> None:
        if event.kind == pb.JobEvent.STATE and event.job.state in progress.TERMINAL_STATES:
            return  # the summary line says it, with the message, right after
        if not self.tty:
            if self._throttle.should_print(event, self.clock()):
                self._line(progress.format_event(event))
            return
        if event.kind != pb.JobEvent.PROGRESS:
            self._line(progress.format_event(event))
        if event.job.state == pb.RUNNING and event.job.progress.total_steps:
            # One column spare: some terminals wrap as soon as the last column is written.
            self._bar(progress.format_progress(event.job, max(self.columns() - 1, 1)))

    def note(self, text: str) -> None:
        self._line(text)

    def end_line(self) -> None:
        if self._bar_len:
            self.out.write("\n")
            self.out.flush()
            self._bar_len = 0

    def _bar(self, text: str) -> None:
        pad = min(self._bar_len, max(self.columns() - 1, len(text)))  # over a longer previous line
        self.out.write("\r" + text.ljust(pad))
        self.out.flush()
        self._bar_len = max(len(text), 1)

    def _line(self, text: str) -> None:
        if self._bar_len:  # replace the bar with the line; the bar is redrawn by the next event
            self.out.write("\r" + " " * self._bar_len + "\r")
            self._bar_len = 0
        self.out.write(text + "\n")
        self.out.flush()
