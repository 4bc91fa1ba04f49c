"""Runs one job from start to finish on Ray: data into the object store, workers, parameter server,
progress into the job store and metrics, the model onto disk. Runs on its own thread, never on an RPC
thread; cancellation is a threading.Event checked between parameter-server calls (about 0.5 s apart).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from gradfleet.v1 import coordinator_pb2 as pb
from service.checkpoints import Checkpoint, CheckpointError, CheckpointStore, spec_hash
from service.config import ServerConfig
from service.datasets import DatasetError
from service.errors import GradfleetError, TrainingFailed
from service.export import model_arrays, write_model
from service.jobs import JobStore
from service.jobsetup import DatasetCache, PreparedData, build_optimizer, model_plan, prepare_data
from service.metrics import Metrics
from service.param_server import Diverged, ParameterServerActor, StepStats, TrainingState
from service.recovery import FaultPolicy
from service.spec import spec_to_json, validate_against_dataset
from workers.batches import steps_per_epoch
from workers.group import WorkerGroup, WorkerLost, WorkersNotStarted
from workers.placement import (
    PlacementGroup,
    Reservation,
    Unplaceable,
    cluster_cpus,
    is_ready,
    release,
    request_workers,
    reserve_workers,
)
from workers.worker import ModelPlan

log = logging.getLogger(__name__)

REPORT_INTERVAL_S = 0.5  # how often the parameter server reports back (progress, cancel checks)
THROUGHPUT_WINDOW_S = 5.0
SHUTDOWN_CHECKPOINT_TIMEOUT_S = 15.0  # a SIGTERM'd coordinator exits in bounded time
START_GRACE_S = 3.0  # actors start and CPUs get placed within a second or two; longer waits are shown


class JobCancelled(Exception):
    pass


class ParameterServerLost(WorkerLost):
    """The parameter-server actor died or stopped answering."""


class _Rescaled(Exception):
    """A ScaleJob arrived while the job waited for CPUs: wait for the new count instead."""


@dataclass
class _JobSetup:
    """What a job's actors are built from; kept to rebuild them after a fault."""

    spec: pb.JobSpec
    plan: ModelPlan
    data: PreparedData
    refs: dict
    total_steps: int
    steps_per_epoch: int
    spec_hash: str


class JobRunner:
    """Trains one job; `run` returns when the job reached a terminal state (or was re-queued by a
    coordinator shutdown, after a checkpoint)."""

    def __init__(
        self,
        job_id: str,
        store: JobStore,
        metrics: Metrics,
        config: ServerConfig,
        cache: DatasetCache,
    ) -> None:
        self.job_id = job_id
        self.store = store
        self.metrics = metrics
        self.config = config
        self.cache = cache
        self.cancel_requested = threading.Event()
        self._scale_lock = threading.Lock()
        self._scale_to: int | None = None  # set by ScaleJob, applied at a step boundary with room for it
        self.shutting_down = threading.Event()  # set with cancel_requested: re-queue, not cancel
        self.checkpoints = CheckpointStore(config.state_dir, job_id)
        self._group: WorkerGroup | None = None
        self._replacing = 0  # ranks of _group that died and wait for their replacement
        self._reservation: Reservation | None = None  # the workers' CPUs; kept across restarts and scales
        self._extra: PlacementGroup | None = None  # CPUs asked for to scale up, not yet granted
        self._extra_asked = 0.0  # time.monotonic() when _extra was asked for
        self._ps = None
        self._setup: _JobSetup | None = None
        self._step = 0  # optimizer steps applied (as the parameter server last reported)
        self._samples = 0  # samples trained up to _step; never counts a redone step twice
        self._counted_step = 0  # highest step already added to the Prometheus counters
        self._checkpoint_step = 0  # step of the newest checkpoint on disk
        self._queued_step = 0  # step of the newest checkpoint handed to the writer
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ckpt-{job_id}")
        self._pending_write: Future | None = None
        self._policy = FaultPolicy(0, False, 0, 1.0)  # set from the spec in run()

    @property
    def num_workers(self) -> int:
        """Live worker actors of this job (0 before they start and after release; dead ones being
        replaced do not count)."""
        group = self._group
        return group.size - self._replacing if group is not None else 0

    def run(self) -> None:
        job = self.store.get(self.job_id)
        self._policy = FaultPolicy.for_spec(job.spec, restarts=job.progress.worker_restarts)
        self.store.update(self.job_id, _set_state(pb.RUNNING, "preparing data and workers"))
        try:
            self._train(job.spec)
        except JobCancelled:
            if self.shutting_down.is_set():
                self._checkpoint_quietly()
                note = "interrupted by a coordinator shutdown; it resumes from its last checkpoint"
                self.store.update(self.job_id, _set_state(pb.QUEUED, note))
                self.metrics.retire_job(self.job_id)
            else:
                self._finish(pb.CANCELLED, "cancelled by request")
        except GradfleetError as exc:
            self._finish(pb.FAILED, exc.message)
        except (DatasetError, CheckpointError) as exc:
            self._finish(pb.FAILED, str(exc))
        except Unplaceable as exc:
            self._finish(pb.FAILED, str(exc))
        except WorkerLost as exc:
            self._finish(pb.FAILED, str(exc))
        except Exception as exc:  # the coordinator must survive anything a job does
            log.exception("job %s failed unexpectedly", self.job_id)
            self._finish(pb.FAILED, f"internal error: {type(exc).__name__}: {exc}; see the server log")
        finally:
            self._release()
            self._writer.shutdown(wait=True)

    def _train(self, spec: pb.JobSpec) -> None:
        data = prepare_data(spec, self.cache)
        ds = data.dataset
        validate_against_dataset(  # again: a large CSV file is only parsed whole here
            spec,
            ds.x_train.shape[1],
            ds.num_classes,
            len(ds.y_train),
            self.config.max_params,
            target_width=ds.target_width,
        )
        resume, skipped = self.checkpoints.latest(spec_hash(spec))
        self._check_cancel()
        per_epoch = steps_per_epoch(len(ds.y_train), spec.batch_size)
        self._setup = _JobSetup(
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
        self._adopt(resume)
        self._start_actors(resume)
        self.metrics.start_job(self.job_id, spec.num_workers)
        note = _resume_note(resume, skipped)
        self.store.update(self.job_id, self._progress_change(note))
        self._loop(has_test=ds.y_test is not None and len(ds.y_test) > 0)
        final = self._call(self._ps.params.remote())
        net = self._setup.plan.network()
        arrays = model_arrays(net.named_parameters(final), data.offset, data.scale, spec_to_json(spec))
        write_model(self.model_path(self.config, self.job_id), arrays)
        self._flush_checkpoints()
        self._finish(pb.SUCCEEDED, "")
        self.checkpoints.remove()  # the final model supersedes them

    # -- actors ---------------------------------------------------------------------------------

    def _start_actors(self, ckpt: Checkpoint | None) -> None:
        """Start workers (in the job's reservation, made first if need be) and a parameter server at
        `ckpt` (None: the spec's initial weights)."""
        setup = self._setup
        spec = setup.spec
        net = setup.plan.network()
        optimizer, schedule = build_optimizer(spec, net.num_params, len(setup.data.dataset.y_train))
        if ckpt is None:
            params, state = net.init_params(np.random.default_rng(spec.seed)), None
        else:
            params, state = ckpt.params, TrainingState(ckpt.step, ckpt.params, ckpt.optimizer, ckpt.lr_scale)
        if self._reservation is None:
            self._reservation = Reservation([self._reserve(spec)])
        self._group = WorkerGroup.start(
            setup.plan,
            spec.num_workers,
            setup.refs,
            ready_timeout_s=self.config.worker_wait_s,
            reservation=self._reservation,
            on_wait=self._waiter(f"waiting for CPUs to start {spec.num_workers} workers"),
        )
        self._check_cancel()
        # Next to the coordinator: losing a worker's node then costs that worker, not a restart.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
        self._ps = ParameterServerActor.options(scheduling_strategy=here).remote(
            self._group,
            params,
            optimizer,
            schedule,
            len(setup.data.dataset.y_train),
            spec.epochs,
            self.config.step_timeout_s,
            clip_norm=spec.optimizer.clip_norm,
            state=state,
        )

    def _reserve(self, spec: pb.JobSpec) -> PlacementGroup:
        """Gang-reserve the workers' CPUs; while there is no room the job shows QUEUED with the reason,
        and a ScaleJob meanwhile makes it wait for the new count instead."""
        shown = [""]  # the reason last written to the job record

        def on_wait(reason: str) -> None:
            self._check_cancel()
            if self._take_scale(spec):
                raise _Rescaled()
            if reason != shown[0]:
                self.store.update(self.job_id, _set_state(pb.QUEUED, reason))
                shown[0] = reason

        while True:
            self._take_scale(spec)
            try:
                group = reserve_workers(
                    spec.num_workers,
                    self.config.worker_wait_s,
                    fail_if_too_small=not self.config.autoscaling,
                    on_wait=on_wait,
                )
                break
            except _Rescaled:
                continue
        if shown[0]:
            self.store.update(self.job_id, _set_state(pb.RUNNING, "starting workers"))
        return group

    def _take_scale(self, spec: pb.JobSpec) -> bool:
        """Before the workers start: adopt a requested worker count; True when it changed."""
        target = self._scale_request()
        if target is None:
            return False
        self._scale_applied(target)
        if target == spec.num_workers:
            return False
        note = f"scaled from {spec.num_workers} to {target} workers before starting"
        spec.num_workers = target
        self.store.update(self.job_id, _scaled(target, note), kind=pb.JobEvent.STATE)
        return True

    def _adopt(self, ckpt: Checkpoint | None, keep_policy: bool = False) -> None:
        """Take the counters of the checkpoint read from disk that training continues from (a
        rollback keeps its own count and learning-rate scale: they are what changed)."""
        self._step = ckpt.step if ckpt else 0
        self._samples = ckpt.samples_trained if ckpt else 0
        self._checkpoint_step = self._queued_step = self._step
        if not keep_policy:
            self._policy.lr_scale = ckpt.lr_scale if ckpt else 1.0
            self._policy.rollbacks = ckpt.rollbacks if ckpt else 0

    # -- the step loop --------------------------------------------------------------------------

    def _loop(self, has_test: bool) -> None:
        self._window: list = []  # (time, samples) for throughput
        while self._step < self._setup.total_steps:
            self._check_cancel()
            try:
                self._scale_if_asked()
                self._advance(has_test)
            except (ParameterServerLost, WorkersNotStarted) as exc:
                self._restart_from_checkpoint(exc)

    def _advance(self, has_test: bool) -> None:
        """Train to the next stop, then handle a fault, or checkpoint and evaluate as due."""
        report = self._call(self._ps.train.remote(self._next_stop(), REPORT_INTERVAL_S))
        if report.steps:
            self._record(report.steps)
        if report.failure is not None:
            self._handle_failure(report.failure, report.failed_step)
            return
        if not report.steps:
            raise TrainingFailed("the parameter server made no progress; see the server log")
        if self._at_checkpoint():
            self._checkpoint()
        if has_test and self._at_eval():
            self._evaluate()

    def _next_stop(self) -> int:
        """The next step where the runner must act: an evaluation, a checkpoint or the end."""
        spec, step, total = self._setup.spec, self._step, self._setup.total_steps
        stops = [total]
        for every in (spec.eval_every_steps, spec.checkpoint_every_steps):
            if every:
                stops.append(step + every - step % every)
        return min(stops)  # epoch ends: the parameter server stops there by itself

    def _at_checkpoint(self) -> bool:
        every, step = self._setup.spec.checkpoint_every_steps, self._step
        at_epoch_end = step % self._setup.steps_per_epoch == 0
        return step < self._setup.total_steps and (at_epoch_end or (every and step % every == 0))

    def _at_eval(self) -> bool:
        every, step, total = self._setup.spec.eval_every_steps, self._step, self._setup.total_steps
        return step % self._setup.steps_per_epoch == 0 or bool(every and step % every == 0) or step >= total

    def _record(self, steps: list[StepStats]) -> None:
        now = time.monotonic()
        window = [(t, n) for t, n in self._window if now - t <= THROUGHPUT_WINDOW_S]
        window.append((now, sum(s.samples for s in steps)))
        self._window = window
        rate = self._throughput(window, steps)
        self._step = steps[-1].step
        self._samples += sum(s.samples for s in steps)
        fresh = [s for s in steps if s.step > self._counted_step]  # redone steps count once
        if fresh:
            self.metrics.record_steps(self.job_id, fresh, rate)
            self._counted_step = fresh[-1].step
        self.store.update(self.job_id, _add_steps(steps, self._samples, rate))

    @staticmethod
    def _throughput(window: list, steps: list[StepStats]) -> float:
        if len(window) >= 2:
            span = window[-1][0] - window[0][0]
            if span > 0:
                return sum(n for _, n in window[1:]) / span
        busy = sum(s.step_seconds for s in steps)
        return sum(s.samples for s in steps) / busy if busy > 0 else 0.0

    def _evaluate(self) -> None:
        while True:  # each lost worker is replaced (or the restart limit fails the job)
            try:
                loss, accuracy, _count, other = self._call(self._ps.evaluate.remote())
                break
            except ParameterServerLost:
                raise
            except WorkerLost as exc:
                self._replace_workers(exc, self._step)
        self.metrics.record_eval(self.job_id, loss, accuracy)
        self.store.update(self.job_id, _set_eval(loss, accuracy, other), kind=pb.JobEvent.EVAL)

    # -- checkpoints ----------------------------------------------------------------------------

    def _checkpoint(self, timeout_s: float | None = None) -> None:
        """Fetch the parameter server's state and write it with the job's counters."""
        state: TrainingState = self._call(self._ps.state.remote(), timeout_s)
        self._queue_checkpoint(self._checkpoint_of(state))

    def _queue_checkpoint(self, ckpt: Checkpoint) -> None:
        # Written on a thread while training goes on (the fsync is most of the cost); one at a
        # time and in order, and always waited for before a checkpoint is read back.
        self._flush_checkpoints()
        self._queued_step = ckpt.step
        self._pending_write = self._writer.submit(self._write_checkpoint, ckpt)

    def _checkpoint_of(self, state: TrainingState) -> Checkpoint:
        """The parameter server's state with the job's counters: everything to continue exactly."""
        setup = self._setup
        plan = setup.plan
        return Checkpoint(
            step=state.step,
            params=state.params,
            optimizer=state.optimizer,
            samples_trained=self._samples,
            epoch=_epoch_of(state.step, setup.steps_per_epoch),
            spec_hash=setup.spec_hash,
            seed=setup.spec.seed,
            layer_sizes=plan.layer_sizes,
            activations=plan.activations,
            loss=plan.loss,
            input_offset=setup.data.offset,
            input_scale=setup.data.scale,
            lr_scale=state.lr_scale,
            rollbacks=self._policy.rollbacks,
        )

    def _write_checkpoint(self, ckpt: Checkpoint) -> None:
        self.checkpoints.save(ckpt)
        self._checkpoint_step = ckpt.step
        self.metrics.record_checkpoint(self.job_id)
        self.store.update(self.job_id, _set_checkpoint(ckpt.step), kind=pb.JobEvent.CHECKPOINT)

    def _flush_checkpoints(self) -> None:
        """Wait for the checkpoint being written; its errors (a full disk) surface here."""
        pending, self._pending_write = self._pending_write, None
        if pending is not None:
            pending.result()

    def _drain_writer(self) -> None:
        """Before the job ends: no checkpoint write may post an update after its final state."""
        try:
            self._flush_checkpoints()
        except Exception:
            log.warning("job %s: the last checkpoint could not be written", self.job_id, exc_info=True)

    def _checkpoint_quietly(self) -> None:
        """On shutdown: save progress made since the last checkpoint, within a bounded time."""
        if self._ps is None or self._setup is None or self._step == self._queued_step:
            self._flush_checkpoints()
            return
        try:
            self._checkpoint(timeout_s=SHUTDOWN_CHECKPOINT_TIMEOUT_S)
            self._flush_checkpoints()
        except Exception:
            log.warning("job %s: no checkpoint at shutdown; it resumes from an older one", self.job_id)

    def _latest_checkpoint(self) -> Checkpoint | None:
        self._flush_checkpoints()
        ckpt, skipped = self.checkpoints.latest(self._setup.spec_hash)
        for note in skipped:
            log.warning("job %s: skipped checkpoint %s", self.job_id, note)
        return ckpt

    # -- faults ---------------------------------------------------------------------------------

    def _handle_failure(self, failure: Exception, failed_step: int) -> None:
        if isinstance(failure, Diverged):
            self._rollback(failure)
        else:
            self._replace_workers(failure, failed_step)

    def _count_restart(self, what: str, failed_step: int, cause: Exception) -> None:
        epoch = _epoch_of(failed_step, self._setup.steps_per_epoch)
        self._policy.actor_died(what, failed_step, epoch, cause)

    def request_scale(self, num_workers: int) -> None:
        """Switch to `num_workers` workers at the first step boundary with CPUs for them (called from
        an RPC thread); a job still waiting for CPUs waits for the new count instead."""
        with self._scale_lock:
            self._scale_to = num_workers

    def _scale_request(self) -> int | None:
        with self._scale_lock:
            return self._scale_to

    def _scale_applied(self, target: int) -> None:
        with self._scale_lock:
            if self._scale_to == target:  # a newer request stays for the next boundary
                self._scale_to = None

    def _scale_if_asked(self) -> None:
        """Switch worker counts once the reservation has room; training goes on with the old workers
        until then. The new actors continue from the live state, written as a checkpoint first (a
        shutdown right after resumes from here); fixed micro-shards keep the results the same."""
        target, before = self._scale_request(), self._setup.spec.num_workers
        if target is None or target == before:
            self._drop_extra()
            if target is not None:
                self._scale_applied(target)
            return
        if not self._room_to_scale(target):
            return
        ckpt = self._checkpoint_of(self._call(self._ps.state.remote()))
        if ckpt.step != self._queued_step:
            self._queue_checkpoint(ckpt)
        self._stop_actors()
        self._reservation.shrink_to(target)
        self._setup.spec.num_workers = target
        self._scale_applied(target)
        note = f"scaled from {before} to {target} workers at step {ckpt.step}"
        log.info("job %s: %s", self.job_id, note)
        self.store.update(self.job_id, _scaled(target, note), kind=pb.JobEvent.STATE)
        self._start_actors(ckpt)  # WorkersNotStarted: restarted from the checkpoint, with `target`
        self._say(note)  # over a "waiting for CPUs" shown while they started
        self.metrics.job_workers.labels(self.job_id).set(target)

    def _room_to_scale(self, target: int) -> bool:
        """Whether the reservation has a CPU for each of `target` workers. If not, it asks for the
        missing ones (without waiting) and says so in the job's message; the caller tries again later."""
        missing = target - self._reservation.size
        if missing <= 0:
            self._drop_extra()
            return True
        if self._extra is not None and self._extra.bundle_count != missing:
            self._drop_extra()
        if self._extra is None:
            self._extra, self._extra_asked = request_workers(missing), time.monotonic()
        if is_ready(self._extra):
            self._reservation.add(self._extra)
            self._extra = None
            return True
        if time.monotonic() - self._extra_asked > START_GRACE_S:  # not just Ray placing it
            _total, free = cluster_cpus()
            cpus = "1 more CPU" if missing == 1 else f"{missing} more CPUs"
            self._say(f"waiting for {cpus} to scale to {target} workers; cluster has {free:g} free")
        return False

    def _drop_extra(self) -> None:
        release(self._extra)
        self._extra = None

    def _waiter(self, note: str) -> Callable[[], None]:
        """What to do while actors start: stop for a cancel, and show `note` once it takes long."""
        since = time.monotonic()

        def on_wait() -> None:
            self._check_cancel()
            if time.monotonic() - since > START_GRACE_S:
                self._say(note)

        return on_wait

    def _say(self, message: str) -> None:
        """Show `message` on the job unless it already shows it (waits call this about once a second)."""
        if self.store.get(self.job_id).message != message:
            self.store.update(self.job_id, _set_message(message))

    def _replace_workers(self, cause: Exception, failed_step: int) -> None:
        """Replace dead workers; the failed step is redone from the same parameters."""
        self._call(self._ps.close.remote())  # frees the live workers from the broken graph
        dead = self._group.dead_ranks() or list(range(self._group.size))
        names = ", ".join(f"worker {r} (pid {self._group.pids[r]})" for r in dead)
        self._count_restart(names, failed_step, cause)
        self._replacing = len(dead)
        try:
            self._start_replacements(dead, names, failed_step)
        finally:
            self._replacing = 0
        self._call(self._ps.set_group.remote(self._group))
        self.metrics.worker_replacements.inc(len(dead))
        note = f"{names} died at step {failed_step}: {cause}; replaced, the step is redone"
        log.warning("job %s: %s", self.job_id, note)
        self.store.update(self.job_id, _recovered(note, self._policy.restarts), kind=pb.JobEvent.RECOVERED)

    def _start_replacements(self, dead: list[int], names: str, failed_step: int) -> None:
        """New actors for the `dead` ranks, tried again while a new one dies too (each counts as a
        restart); waiting for CPUs for them at most worker_wait_s in all, and saying so meanwhile."""
        what = f"{names} died at step {failed_step}"
        deadline = time.monotonic() + self.config.worker_wait_s
        cpus = "a CPU" if len(dead) == 1 else f"{len(dead)} CPUs"
        on_wait = self._waiter(f"{what}; waiting for {cpus} to replace {'it' if len(dead) == 1 else 'them'}")
        while True:
            self._check_cancel()
            try:
                self._group.replace(dead, max(deadline - time.monotonic(), 1.0), on_wait)
                return
            except ray.exceptions.GetTimeoutError:
                raise WorkerLost(
                    f"{what} and no replacement started within {self.config.worker_wait_s:.0f} s "
                    "(worker_wait_s); add CPUs to the cluster or lower num_workers"
                ) from None
            except ray.exceptions.RayActorError as again:
                # The replacement died too (say its node went as well): that counts as well.
                log.warning("job %s: replacing after %s failed (%s); trying again", self.job_id, what, again)
                self._count_restart(names, failed_step, again)

    def _restart_from_checkpoint(self, cause: Exception) -> None:
        """The parameter server is gone, or new workers did not start: new actors from the last
        checkpoint, in the CPUs the job already holds."""
        failed_step = self._step + 1
        while True:
            what = "the parameter server" if isinstance(cause, ParameterServerLost) else "the new workers"
            self._count_restart(what, failed_step, cause)
            self._stop_actors()
            ckpt = self._latest_checkpoint()
            self._adopt(ckpt)
            try:
                self._start_actors(ckpt)
                break
            except WorkersNotStarted as exc:
                cause = exc
        self.metrics.worker_replacements.inc()
        note = (
            f"{what} died at step {failed_step}: {cause}; "
            f"restarted from {'the checkpoint at step ' + str(ckpt.step) if ckpt else 'the initial weights'}"
        )
        log.warning("job %s: %s", self.job_id, note)
        self.store.update(self.job_id, self._progress_change(note), kind=pb.JobEvent.RECOVERED)

    def _rollback(self, diverged: Diverged) -> None:
        self.metrics.record_divergence(self.job_id, diverged.loss)  # for the loss-not-finite alert
        spec = self._setup.spec
        if not self._policy.rolls_back():  # fail with the divergence, whatever the checkpoints hold
            self._drain_writer()
            last = self._checkpoint_step
            self._policy.diverged(diverged.message, f"the checkpoint at step {last}" if last else None)
        ckpt = self._latest_checkpoint()
        where = f"the checkpoint at step {ckpt.step}" if ckpt else "the initial weights"
        scale = self._policy.diverged(diverged.message, where if ckpt else None)
        rollbacks = self._policy.rollbacks
        if ckpt is None:
            net = self._setup.plan.network()
            state = TrainingState(0, net.init_params(np.random.default_rng(spec.seed)), {}, scale)
        else:
            state = TrainingState(ckpt.step, ckpt.params, ckpt.optimizer, scale)
        self._call(self._ps.restore.remote(state))
        self._adopt(ckpt, keep_policy=True)
        self.metrics.divergence_rollbacks.inc()
        note = (
            f"{diverged.message}; rolled back to {where} with the learning rate scaled by {scale:.3g} "
            f"(rollback {rollbacks} of {spec.max_rollbacks})"
        )
        log.warning("job %s: %s", self.job_id, note)
        self.store.update(self.job_id, self._progress_change(note), kind=pb.JobEvent.ROLLBACK)

    def _progress_change(self, message: str):
        step, samples, ckpt_step = self._step, self._samples, self._checkpoint_step
        total, rollbacks, restarts = self._setup.total_steps, self._policy.rollbacks, self._policy.restarts
        epoch = _epoch_of(step, self._setup.steps_per_epoch)

        def change(job: pb.Job) -> None:
            p = job.progress
            p.total_steps, p.step, p.samples_trained, p.epoch = total, step, samples, epoch
            p.checkpoint_step, p.rollbacks, p.worker_restarts = ckpt_step, rollbacks, restarts
            job.message = message

        return change

    # -- plumbing -------------------------------------------------------------------------------

    def _call(self, ref, timeout_s: float | None = None):
        """ray.get with a bound: a stuck cluster fails or restarts the job instead of hanging it."""
        try:
            return ray.get(ref, timeout=timeout_s or self.config.step_timeout_s * 2 + 60)
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause if hasattr(exc, "cause") else None
            if isinstance(cause, (GradfleetError, WorkerLost)):
                raise cause from None
            # The full remote traceback goes to the log; the job message stays one readable line.
            log.error("job %s: remote error\n%s", self.job_id, exc)
            raise TrainingFailed(
                f"internal error on the cluster: {type(cause).__name__}: {cause}; see the server log"
            ) from None
        except ray.exceptions.GetTimeoutError as exc:
            raise ParameterServerLost("it did not answer in time (GetTimeoutError)") from exc
        except ray.exceptions.RayActorError as exc:
            raise ParameterServerLost(f"its actor is gone ({type(exc).__name__})") from exc

    def _check_cancel(self) -> None:
        if self.cancel_requested.is_set():
            raise JobCancelled()

    def _finish(self, state: int, message: str) -> None:
        self._drain_writer()
        self.store.update(self.job_id, _set_state(state, message))
        self.metrics.finish_job(self.job_id, pb.JobState.Name(state).lower())
        log.info("job %s %s %s", self.job_id, pb.JobState.Name(state), message)

    def _release(self) -> None:
        """Stop the actors and give back the job's CPUs."""
        self._stop_actors()
        if self._reservation is not None:
            self._reservation.release()
            self._reservation = None
        self._drop_extra()

    def _stop_actors(self) -> None:
        """Stop the parameter server and the workers; the reservation stays for their successors."""
        if self._ps is not None:
            try:
                ray.get(self._ps.close.remote(), timeout=10)
            except Exception:
                log.warning("parameter server of job %s did not close cleanly", self.job_id)
            ray.kill(self._ps, no_restart=True)
            self._ps = None
        if self._group is not None:
            self._group.shutdown()
            self._group = None

    def actor_pids(self, timeout_s: float = 10.0) -> dict[str, int]:
        """{"worker-RANK": pid, "parameter-server": pid} of the running actors (for fault tests)."""
        if self._group is None or self._ps is None:
            return {}
        pids = {f"worker-{rank}": pid for rank, pid in enumerate(self._group.pids)}
        pids["parameter-server"] = ray.get(self._ps.pid.remote(), timeout=timeout_s)
        return pids

    @staticmethod
    def model_path(config: ServerConfig, job_id: str) -> Path:
        return config.state_dir / "models" / f"{job_id}.npz"


def _epoch_of(step: int, per_epoch: int) -> int:
    """The 1-based epoch of the 1-based `step` (0 before any step)."""
    return (step - 1) // per_epoch + 1 if step else 0


def _resume_note(ckpt: Checkpoint | None, skipped: list[str]) -> str:
    if ckpt is None:
        return ""
    note = f"resumed from the checkpoint at step {ckpt.step}"
    if skipped:
        note += " (skipped unusable newer ones: " + "; ".join(skipped) + ")"
    return note


def _set_state(state: int, message: str):
    def change(job: pb.Job) -> None:
        job.state = state
        job.message = message

    return change


def _set_message(message: str):
    def change(job: pb.Job) -> None:
        job.message = message

    return change


def _set_progress_total(total: int, message: str):
    def change(job: pb.Job) -> None:
        job.progress.total_steps = total
        job.message = message

    return change


def _add_steps(steps: list[StepStats], samples_trained: int, rate: float):
    def change(job: pb.Job) -> None:
        last = steps[-1]
        p = job.progress
        p.epoch = last.epoch
        p.step = last.step
        p.samples_trained = samples_trained
        p.loss = last.loss
        p.learning_rate = last.learning_rate
        p.samples_per_second = rate

    return change


def _scaled(num_workers: int, message: str):
    def change(job: pb.Job) -> None:
        job.spec.num_workers = num_workers
        job.message = message

    return change


def _set_checkpoint(step: int):
    def change(job: pb.Job) -> None:
        job.progress.checkpoint_step = step

    return change


def _recovered(message: str, restarts: int):
    def change(job: pb.Job) -> None:
        job.message = message
        job.progress.worker_restarts = restarts

    return change


def _set_eval(loss: float, accuracy: float, other: dict[str, float]):
    def change(job: pb.Job) -> None:
        job.progress.eval_loss = loss
        job.progress.eval_accuracy = accuracy
        job.progress.has_eval = True
        job.progress.eval_top_k_accuracy = other.get("top_k_accuracy", float("nan"))
        job.progress.eval_mse = other.get("mse", float("nan"))
        job.progress.eval_mae = other.get("mae", float("nan"))
        job.progress.eval_r2 = other.get("r2", float("nan"))

    return change
