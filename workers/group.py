"""A job's worker actors and the compiled Ray graph that broadcasts a step to them.

The group is created in the coordinator (which owns the actors' lifecycle) and handed to the
parameter-server actor, which compiles and drives the graph: a compiled graph may only be called by
the process that compiled it, and driving it from the parameter server keeps the per-step exchange
to shared-memory channels (about 1 ms with 2 workers) instead of several actor calls (about 7 ms).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import ray
from ray.dag import InputNode, MultiOutputNode

from workers import placement
from workers.placement import Reservation
from workers.worker import EvalResult, GradientWorker, ModelPlan, StepCommand, TrainResult

log = logging.getLogger(__name__)


class WorkerLost(RuntimeError):
    """A worker died or stopped answering; the message names it and the cause."""

    def __reduce__(self):  # crosses from the parameter-server actor to the coordinator
        return (type(self), self.args)


class WorkersNotStarted(WorkerLost):
    """New worker actors did not come up (their node went, or they never got a CPU)."""


@dataclass
class WorkerGroup:
    """Owns the actors of one job: start, run a step, shut down."""

    plan: ModelPlan
    actors: list = field(default_factory=list)
    data_refs: dict = field(default_factory=dict)
    pids: list = field(default_factory=list)  # process id of each rank's actor, for messages
    _graph: object = None
    # Where each rank runs; the runner owns it (it outlives the group when a job scales or restarts).
    _reservation: Reservation | None = None

    @classmethod
    def start(
        cls,
        plan: ModelPlan,
        num_workers: int,
        data_refs: dict,
        ready_timeout_s: float = 120.0,
        reservation: Reservation | None = None,
        on_wait: Callable[[], None] | None = None,
    ):
        """Create `num_workers` actors holding refs to the data already in the object store.

        With `reservation` (see workers.placement) worker `rank` runs in its slot `rank`. While they
        are not up it calls `on_wait()` about once a second (an exception from it ends the wait);
        WorkersNotStarted when they do not all start within `ready_timeout_s`.
        """
        actors = [_new_worker(plan, rank, data_refs, reservation) for rank in range(num_workers)]
        group = cls(plan, actors, data_refs, _reservation=reservation)
        try:
            group.pids = _wait_started(actors, ready_timeout_s, on_wait)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as exc:
            group.shutdown()
            raise WorkersNotStarted(
                f"new workers did not start: {type(exc).__name__}: {_first_line(exc)}"
            ) from exc
        except BaseException:
            group.shutdown()
            raise
        return group

    def dead_ranks(self, timeout_s: float = 10.0) -> list[int]:
        """Ranks whose actor no longer answers a ping within `timeout_s` (bounded, never hangs)."""
        refs = [actor.pid.remote() for actor in self.actors]
        dead = []
        for rank, ref in enumerate(refs):
            try:
                ray.get(ref, timeout=timeout_s)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                dead.append(rank)
        return dead

    def replace(
        self, ranks: list[int], ready_timeout_s: float = 120.0, on_wait: Callable[[], None] | None = None
    ) -> None:
        """Start a new actor for each of `ranks`; it takes over that rank's micro-shards.

        While they are not up it calls `on_wait()` about once a second (an exception from it ends the
        wait); GetTimeoutError after `ready_timeout_s`, RayActorError when a new actor dies.
        """
        self.release_graph()
        for rank in ranks:
            ray.kill(self.actors[rank], no_restart=True)  # a hung actor must not linger
            self.actors[rank] = _new_worker(self.plan, rank, self.data_refs, self._reservation)
        pids = _wait_started([self.actors[rank] for rank in ranks], ready_timeout_s, on_wait)
        for rank, pid in zip(ranks, pids, strict=True):
            self.pids[rank] = pid

    @property
    def size(self) -> int:
        return len(self.actors)

    def compile(self) -> None:
        """Build the broadcast graph; call in the process that will run the steps."""
        with InputNode() as command:
            dag = MultiOutputNode([actor.handle.bind(command) for actor in self.actors])
        self._graph = dag.experimental_compile()

    def run(
        self, command: StepCommand, timeout_s: float, idle_s: float = 0.0
    ) -> list[TrainResult | EvalResult]:
        """Send one command to every worker and wait for all results (never without a timeout).

        `idle_s`: sleep this long before waiting. Ray's channel read spins, so a caller that knows
        the workers will take a while (the last step's compute) leaves them the CPU meanwhile.
        """
        if self._graph is None:
            self.compile()
        try:
            ref = self._graph.execute(command)
            if idle_s > 0:
                time.sleep(idle_s)
            return ray.get(ref, timeout=timeout_s)
        except TimeoutError as exc:  # GetTimeoutError and RayChannelTimeoutError both are
            raise WorkerLost(f"a worker did not answer within {timeout_s:.0f} s") from exc
        except (ray.exceptions.RayActorError, ray.exceptions.RayChannelError) as exc:
            raise WorkerLost(f"{type(exc).__name__}: {_first_line(exc)}") from exc

    def release_graph(self) -> None:
        if self._graph is not None:
            try:
                self._graph.teardown()
            except Exception:  # teardown of a broken graph may itself fail; the actors are killed next
                log.warning("compiled graph teardown failed", exc_info=True)
            self._graph = None

    def shutdown(self) -> None:
        """Kill the actors (they hold no state worth a graceful stop); the reservation stays."""
        self.release_graph()
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []

    def __getstate__(self):
        # The compiled graph lives in one process only; a copy sent to another actor starts without it.
        # The reservation stays with the coordinator's copy, which owns the workers' lifecycle.
        return {**self.__dict__, "_graph": None, "_reservation": None}


def _wait_started(actors: list, timeout_s: float, on_wait: Callable[[], None] | None) -> list[int]:
    """The process ids of `actors` once all answer, calling `on_wait()` about once a second until
    then. GetTimeoutError after `timeout_s`; RayActorError when one died."""
    refs = [actor.pid.remote() for actor in actors]

    def on_poll(timed_out: bool) -> None:
        if timed_out:
            raise ray.exceptions.GetTimeoutError(f"the workers did not start within {timeout_s:.0f} s")
        if on_wait is not None:
            on_wait()

    placement.wait_all(refs, timeout_s, on_poll)  # a dead actor's ref is ready too: reading it raises
    return ray.get(refs, timeout=10)


def _first_line(exc: Exception, limit: int = 160) -> str:
    """Ray's actor errors run to many lines; their first one says what happened."""
    line = str(exc).strip().splitlines()[0] if str(exc).strip() else "no detail"
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _new_worker(plan: ModelPlan, rank: int, data_refs: dict, reservation: Reservation | None = None):
    keys = ("x_train", "y_train", "x_test", "y_test", "offset", "scale")
    strategy = "DEFAULT" if reservation is None else reservation.slot(rank)
    return GradientWorker.options(scheduling_strategy=strategy).remote(
        plan, rank, *(data_refs[k] for k in keys)
    )
