"""A job's Ray actors: what they are built from (its data in the object store, the model plan, the
step counts), and the worker group and parameter server themselves, with bounded calls into them."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from gradfleet.v1 import coordinator_pb2 as pb
from service.checkpoints import Checkpoint, spec_hash
from service.config import ServerConfig
from service.errors import GradfleetError, TrainingFailed
from service.jobsetup import PreparedData, build_optimizer, model_plan
from service.param_server import ParameterServerActor, TrainingState
from service.wording import clause, plural
from service.worker_cpus import START_GRACE_S, WorkerCPUs
from workers.batches import steps_per_epoch
from workers.group import WorkerGroup, WorkerLost
from workers.worker import ModelPlan

log = logging.getLogger(__name__)


class ParameterServerLost(WorkerLost):
    """The parameter-server actor died or stopped answering."""


@dataclass
class JobSetup:
    """What a job's actors are built from; kept to rebuild them after a fault."""

    spec: pb.JobSpec
    plan: ModelPlan
    data: PreparedData
    refs: dict
    total_steps: int
    steps_per_epoch: int
    spec_hash: str

    @classmethod
    def build(cls, spec: pb.JobSpec, data: PreparedData) -> JobSetup:
        """Put the job's data into the object store once, for every worker started from it."""
        ds = data.dataset
        per_epoch = steps_per_epoch(len(ds.y_train), spec.batch_size)
        return cls(
            spec=spec,
            plan=model_plan(spec, ds.x_train.shape[1]),
            data=data,
            refs={
                "x_train": ray.put(ds.x_train),
                "y_train": ray.put(ds.y_train),
                "x_test": ray.put(ds.x_test),
                "y_test": ray.put(ds.y_test),
                "offset": ray.put(data.offset),
                "scale": ray.put(data.scale),
            },
            total_steps=per_epoch * spec.epochs,
            steps_per_epoch=per_epoch,
            spec_hash=spec_hash(spec),
        )

    def initial_params(self) -> np.ndarray:
        """The spec's initial weights (from its seed)."""
        return self.plan.network().init_params(np.random.default_rng(self.spec.seed))

    def checkpoint_of(self, state: TrainingState, samples_trained: int, rollbacks: int) -> Checkpoint:
        """The parameter server's state with the job's counters: everything to continue exactly."""
        plan = self.plan
        return Checkpoint(
            step=state.step,
            params=state.params,
            optimizer=state.optimizer,
            samples_trained=samples_trained,
            epoch=self.epoch_of(state.step),
            spec_hash=self.spec_hash,
            seed=self.spec.seed,
            layer_sizes=plan.layer_sizes,
            activations=plan.activations,
            loss=plan.loss,
            input_offset=self.data.offset,
            input_scale=self.data.scale,
            lr_scale=state.lr_scale,
            rollbacks=rollbacks,
        )

    def epoch_of(self, step: int) -> int:
        """The 1-based epoch of the 1-based `step` (0 before any step)."""
        return (step - 1) // self.steps_per_epoch + 1 if step else 0

    def next_stop(self, step: int) -> int:
        """The next step after `step` where the runner must act: an evaluation, a checkpoint or the end."""
        stops = [self.total_steps]
        for every in (self.spec.eval_every_steps, self.spec.checkpoint_every_steps):
            if every:
                stops.append(step + every - step % every)
        return min(stops)  # epoch ends: the parameter server stops there by itself

    def checkpoint_due(self, step: int) -> bool:
        every = self.spec.checkpoint_every_steps
        at_epoch_end = step % self.steps_per_epoch == 0
        return step < self.total_steps and (at_epoch_end or (every and step % every == 0))

    def eval_due(self, step: int) -> bool:
        every = self.spec.eval_every_steps
        at_epoch_end = step % self.steps_per_epoch == 0
        return at_epoch_end or bool(every and step % every == 0) or step >= self.total_steps


class JobActors:
    """A job's worker group and parameter server: started together, dead workers replaced in place,
    stopped together. The CPUs they run in belong to the caller and outlive them."""

    def __init__(
        self,
        job_id: str,
        config: ServerConfig,
        check_cancel: Callable[[], None],
        say: Callable[[str], None],
    ) -> None:
        self.job_id = job_id
        self.config = config
        self.check_cancel = check_cancel  # raises to stop a wait for actors (a cancel, a shutdown)
        self.say = say  # shows a message on the job (what a long wait waits for)
        self.group: WorkerGroup | None = None
        self.ps = None
        self.replacing = 0  # ranks of group that died and wait for their replacement

    @property
    def live_workers(self) -> int:
        """Live worker actors (0 before they start and after they stop; dead ones being replaced do
        not count)."""
        group = self.group
        return group.size - self.replacing if group is not None else 0

    def start(self, setup: JobSetup, ckpt: Checkpoint | None, cpus: WorkerCPUs) -> None:
        """Start workers in the job's reservation (made first if need be) and a parameter server at
        `ckpt` (None: the spec's initial weights)."""
        spec = setup.spec
        net = setup.plan.network()
        optimizer, schedule = build_optimizer(spec, net.num_params, len(setup.data.dataset.y_train))
        if ckpt is None:
            params, state = setup.initial_params(), None
        else:
            params, state = ckpt.params, TrainingState(ckpt.step, ckpt.params, ckpt.optimizer, ckpt.lr_scale)
        reservation = cpus.reserve(spec)
        self.group = WorkerGroup.start(
            setup.plan,
            spec.num_workers,
            setup.refs,
            ready_timeout_s=self.config.worker_wait_s,
            reservation=reservation,
            on_wait=self._waiter(f"waiting for CPUs to start {plural(spec.num_workers, 'worker')}"),
        )
        self.check_cancel()
        # Next to the coordinator: losing a worker's node then costs that worker, not a restart.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
        self.ps = ParameterServerActor.options(scheduling_strategy=here).remote(
            self.group,
            params,
            optimizer,
            schedule,
            len(setup.data.dataset.y_train),
            spec.epochs,
            self.config.step_timeout_s,
            clip_norm=spec.optimizer.clip_norm,
            state=state,
            first_step_advice=setup.data.first_step_advice,
        )

    def ps_call(self, method: str, *args, timeout_s: float | None = None):
        """The parameter server's `method(*args)`, waited for with a bound: a stuck cluster fails or
        restarts the job instead of hanging it (ParameterServerLost)."""
        return self.ps_result(self.ps_start(method, *args), timeout_s)

    def ps_start(self, method: str, *args) -> ray.ObjectRef:
        """Call the parameter server's `method(*args)` without waiting; see `ps_result`. It runs
        after the calls started before it: the actor takes one at a time, in order."""
        return getattr(self.ps, method).remote(*args)

    def ps_result(self, ref: ray.ObjectRef, timeout_s: float | None = None):
        """The result of a call from `ps_start`, with the errors and bound of `ps_call`."""
        try:
            return ray.get(ref, timeout=timeout_s or self.config.step_timeout_s * 2 + 60)
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause if hasattr(exc, "cause") else None
            if isinstance(cause, (GradfleetError, WorkerLost)):
                raise cause from None
            # The full remote traceback goes to the log; the job message stays one readable line.
            log.error("job %s: remote error\n%s", self.job_id, exc)
            raise TrainingFailed(
                f"internal error on the cluster: {type(cause).__name__}: {clause(cause)}; see the server log"
            ) from None
        except ray.exceptions.GetTimeoutError as exc:
            raise ParameterServerLost("it did not answer in time (GetTimeoutError)") from exc
        except ray.exceptions.RayActorError as exc:
            raise ParameterServerLost(f"its actor is gone ({type(exc).__name__})") from exc

    def dead_workers(self) -> list[int]:
        """The ranks of the workers that died (all of them when none is found dead: the graph broke)."""
        return self.group.dead_ranks() or list(range(self.group.size))

    def replace(self, dead: list[int], what: str, on_retry: Callable[[Exception], None]) -> None:
        """New actors for the `dead` ranks (`what` says how they died), handed to the parameter server;
        tried again while a new one dies too (`on_retry` with why), waiting for CPUs for them at most
        worker_wait_s in all and saying so meanwhile. WorkerLost when they do not start in time."""
        self.replacing = len(dead)
        try:
            self._start_replacements(dead, what, on_retry)
        finally:
            self.replacing = 0
        self.ps_call("set_group", self.group)

    def _start_replacements(self, dead: list[int], what: str, on_retry: Callable[[Exception], None]) -> None:
        deadline = time.monotonic() + self.config.worker_wait_s
        cpus = "a CPU" if len(dead) == 1 else f"{len(dead)} CPUs"
        on_wait = self._waiter(f"{what}; waiting for {cpus} to replace {'it' if len(dead) == 1 else 'them'}")
        while True:
            self.check_cancel()
            try:
                self.group.replace(dead, max(deadline - time.monotonic(), 1.0), on_wait)
                return
            except ray.exceptions.GetTimeoutError:
                raise WorkerLost(
                    f"{what} and no replacement started within {self.config.worker_wait_s:.0f} s "
                    "(worker_wait_s); add CPUs to the cluster or lower num_workers"
                ) from None
            except ray.exceptions.RayActorError as again:
                # The replacement died too (say its node went as well): that counts as well.
                log.warning("job %s: replacing after %s failed (%s); trying again", self.job_id, what, again)
                on_retry(again)

    def _waiter(self, note: str) -> Callable[[], None]:
        """What to do while actors start: stop for a cancel, and show `note` once it takes long."""
        since = time.monotonic()

        def on_wait() -> None:
            self.check_cancel()
            if time.monotonic() - since > START_GRACE_S:
                self.say(note)

        return on_wait

    def stop(self) -> None:
        """Stop the parameter server and the workers."""
        if self.ps is not None:
            try:
                ray.get(self.ps.close.remote(), timeout=10)
            except Exception:
                log.warning("parameter server of job %s did not close cleanly", self.job_id)
            ray.kill(self.ps, no_restart=True)
            self.ps = None
        if self.group is not None:
            self.group.shutdown()
            self.group = None

    def pids(self, timeout_s: float = 10.0) -> dict[str, int]:
        """{"worker-RANK": pid, "parameter-server": pid} of the running actors (for fault tests)."""
        if self.group is None or self.ps is None:
            return {}
        pids = {f"worker-{rank}": pid for rank, pid in enumerate(self.group.pids)}
        pids["parameter-server"] = ray.get(self.ps.pid.remote(), timeout=timeout_s)
        return pids
