"""Runs one job from start to finish on Ray: data into the object store, workers, parameter server,
progress into the job store and metrics, the model onto disk. Runs on its own thread, never on an RPC
thread; cancellation is a threading.Event checked between parameter-server calls (about 0.5 s apart).
Its parts: the actors (service.job_actors), their CPUs and scale requests (service.worker_cpus), the
checkpoint writes (service.checkpoint_writer), what it does about a fault (service.job_faults), the
scaling between steps (service.job_scaling) and the changes to the job's record (service.job_changes).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from gradfleet.v1 import coordinator_pb2 as pb
from service import job_changes as changes
from service.checkpoint_writer import CheckpointWriter
from service.checkpoints import Checkpoint, CheckpointError, CheckpointStore, spec_hash
from service.config import ServerConfig
from service.datasets import DatasetError
from service.errors import GradfleetError, StateNotWritable, TrainingFailed
from service.export import model_arrays, write_model
from service.job_actors import JobActors, JobSetup, ParameterServerLost
from service.job_faults import JobFaults
from service.job_parts import JobParts
from service.job_scaling import JobScaling
from service.jobs import JobStore
from service.jobsetup import DatasetCache, prepare_data
from service.metrics import Metrics
from service.param_server import StepStats, TrainingState
from service.recovery import FaultPolicy
from service.spec import spec_to_json
from service.spec_validation import validate_against_dataset
from service.wording import clause, idle_workers_note
from service.worker_cpus import ScaleRequest, WorkerCPUs
from workers.cpu_queue import CpuQueue
from workers.group import WorkerLost, WorkersNotStarted
from workers.placement import Unplaceable

if TYPE_CHECKING:
    import ray

log = logging.getLogger(__name__)

REPORT_INTERVAL_S = 0.5  # how often the parameter server reports back (progress, cancel checks)
THROUGHPUT_WINDOW_S = 5.0
SHUTDOWN_CHECKPOINT_TIMEOUT_S = 15.0  # a SIGTERM'd coordinator exits in bounded time
CANCELLED_NOTE = "cancelled by request"


class JobCancelled(Exception):
    pass


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
        cpu_queue: CpuQueue | None = None,
    ) -> None:
        self.job_id = job_id
        self.store = store
        self.metrics = metrics
        self.config = config
        self.cache = cache
        self.cancel_requested = threading.Event()
        self.shutting_down = threading.Event()  # set with cancel_requested: re-queue, not cancel
        self.cancelled_by_user = threading.Event()  # set with cancel_requested by `cancel`: cancel, always
        self.checkpoints = CheckpointStore(config.state_dir, job_id)
        self._scale = ScaleRequest()  # set by ScaleJob, applied at a step boundary with room for it
        self._cpus = WorkerCPUs(job_id, store, config, self._scale, self._check_cancel, cpu_queue)
        self._actors = JobActors(job_id, config, self._check_cancel, self._say)
        self._writer = CheckpointWriter(job_id, self.checkpoints, store, metrics)
        parts = JobParts(job_id, store, metrics, self._actors, self._cpus, self._writer)
        self._faults = JobFaults(parts, self._adopt, self._progress_change)
        self._scaling = JobScaling(parts, self._scale, self._checkpoint_of)
        self._setup: JobSetup | None = None
        self._step = 0  # optimizer steps applied (as the parameter server last reported)
        self._samples = 0  # samples trained up to _step; never counts a redone step twice
        self._counted_step = 0  # highest step already added to the Prometheus counters
        self._policy = FaultPolicy(0, False, 0, 1.0)  # set from the spec in run()
        self._ahead: ray.ObjectRef | None = None  # a train call sent before the last report was recorded
        self._evaluated_step = -1  # the step of the last evaluation recorded
        self._saved = True  # whether the job's final state reached the disk (see _finish)

    @property
    def num_workers(self) -> int:
        """Live worker actors of this job (0 before they start and after release; dead ones being
        replaced do not count)."""
        return self._actors.live_workers

    def request_scale(self, num_workers: int) -> None:
        """Switch to `num_workers` workers at the first step boundary with CPUs for them (called from
        an RPC thread); a job still waiting for CPUs waits for the new count instead."""
        self._scale.set(num_workers)

    def cancel(self) -> None:
        """A user's cancel (CancelJob; called from an RPC thread). It is in the job store before it
        returns, so a coordinator stopped or killed before the job acts on it ends the job CANCELLED,
        then or at its next start, rather than resuming it."""
        self.store.request_cancel(self.job_id)
        self.cancelled_by_user.set()
        self.cancel_requested.set()

    def run(self) -> None:
        job = self.store.get(self.job_id)
        self._policy = FaultPolicy.for_spec(
            job.spec, restarts=job.progress.worker_restarts, server_restarts=job.progress.server_restarts
        )
        try:
            # Read before the data: while that loads, the job shows the counters it resumes from.
            resume, skipped = self.checkpoints.latest(spec_hash(job.spec), job.progress.checkpoint_step)
            self.store.update(self.job_id, changes.preparing(resume))
            self._train(job.spec, resume, skipped)
        except JobCancelled:
            if self.shutting_down.is_set() and not self.cancelled_by_user.is_set():
                self._checkpoint_quietly()
                note = "interrupted by a coordinator shutdown; it resumes from its last checkpoint"
                self.store.update(self.job_id, changes.set_state(pb.QUEUED, note))
                self.metrics.retire_job(self.job_id)
            else:
                self._finish(pb.CANCELLED, CANCELLED_NOTE)
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
            note = f"internal error: {type(exc).__name__}: {clause(exc)}; see the server log"
            self._finish(pb.FAILED, note)
        finally:
            self._release()
            self._writer.close()

    def _train(self, spec: pb.JobSpec, resume: Checkpoint | None, skipped: list[str]) -> None:
        """Train from `resume` (None: the initial weights) to the end; `skipped`: newer checkpoints
        found unusable."""
        data = prepare_data(spec, self.cache)
        ds = data.dataset
        validate_against_dataset(  # again: a large CSV file is only parsed whole here
            spec,
            ds.x_train.shape[1],
            ds.num_classes,
            len(ds.y_train),
            self.config.max_params,
            target_width=ds.target_width,
            target_range=ds.target_range,
        )
        self._check_cancel()
        self._setup = JobSetup.build(spec, data)
        self._adopt(resume)
        try:
            self._actors.start(self._setup, resume, self._cpus)
        except WorkersNotStarted as exc:  # as when new workers die later on: counted, tried again
            self._faults.restart_from_checkpoint(exc, self._step + 1, self._setup, self._policy)
        self.metrics.start_job(self.job_id, spec.num_workers)
        has_test = ds.y_test is not None and len(ds.y_test) > 0
        no_test = "" if has_test else changes.no_test_note(spec.dataset.uri)
        idle = idle_workers_note(spec.num_workers, spec.micro_shards, spec.batch_size)
        note = "; ".join(filter(None, (no_test, changes.resume_note(resume, skipped), idle)))
        # A note is news to a watcher, which shows the message of STATE events but not of PROGRESS ones.
        kind = pb.JobEvent.STATE if note else pb.JobEvent.PROGRESS
        self.store.update(self.job_id, self._progress_change(note), kind=kind)
        self._loop(has_test=has_test, evaluate_first=has_test and self._evaluation_missing())
        self._check_cancel()  # one that came during the last steps or the final evaluation
        final = self._actors.ps_call("params")
        net = self._setup.plan.network()
        arrays = model_arrays(net.named_parameters(final), data.offset, data.scale, spec_to_json(spec))
        write_model(self.model_path(self.config, self.job_id), arrays)
        self._writer.flush()
        # The note stays visible once the job is done; the final model supersedes the checkpoints.
        if self._finish(pb.SUCCEEDED, no_test, unless_cancelled=True) == pb.SUCCEEDED and self._saved:
            self.checkpoints.remove()

    def _adopt(self, ckpt: Checkpoint | None, keep_policy: bool = False) -> None:
        """Take the counters of the checkpoint read from disk that training continues from (a
        rollback keeps its own count and learning-rate scale: they are what changed)."""
        self._step = ckpt.step if ckpt else 0
        self._samples = ckpt.samples_trained if ckpt else 0
        self._writer.continue_from(self._step)
        if not keep_policy:
            self._policy.lr_scale = ckpt.lr_scale if ckpt else 1.0
            self._policy.rollbacks = ckpt.rollbacks if ckpt else 0

    # -- the step loop --------------------------------------------------------------------------

    def _loop(self, has_test: bool, evaluate_first: bool = False) -> None:
        """Train to the end; `evaluate_first`: evaluate before the first step (see _train)."""
        self._window: list = []  # (time, samples) for throughput
        while evaluate_first or self._step < self._setup.total_steps:
            self._check_cancel()
            try:
                if evaluate_first:
                    self._evaluate()
                    evaluate_first = False
                    continue
                self._scaling.scale_if_asked(self._setup, train_call_ahead=self._ahead is not None)
                self._advance(has_test)
            except (ParameterServerLost, WorkersNotStarted) as exc:
                self._ahead = None  # went with the lost actors
                self._faults.restart_from_checkpoint(exc, self._step + 1, self._setup, self._policy)
                evaluate_first = has_test and self._evaluation_missing()

    def _evaluation_missing(self) -> bool:
        """Whether the step training continues from is due an evaluation that was not recorded. A
        step's checkpoint is written before its evaluation: a coordinator stopped, or actors lost,
        between the two would skip that evaluation, and at the last step end on the previous one."""
        step = self._step
        return step > 0 and self._setup.eval_due(step) and step != self._evaluated_step

    def _advance(self, has_test: bool) -> None:
        """Train to the next stop, then handle a fault, or checkpoint and evaluate as due. The
        parameter server gets its next calls (the checkpoint's state, the evaluation, the next train
        call, in that order) before this thread records the report: recording (the job store's
        fsync, metrics) left it waiting a median 14-21 ms every 0.5 s, longer under client load."""
        ahead, self._ahead = self._ahead, None
        if ahead is None:
            ahead = self._actors.ps_start("train", self._setup.next_stop(self._step), REPORT_INTERVAL_S)
        report = self._actors.ps_result(ahead)
        clean = report.failure is None and bool(report.steps)
        step = report.steps[-1].step if clean else self._step
        state = self._actors.ps_start("state") if clean and self._setup.checkpoint_due(step) else None
        due_eval = clean and has_test and self._setup.eval_due(step)
        scores = self._actors.ps_start("evaluate") if due_eval else None
        if clean and self._may_train_on(step):
            self._ahead = self._actors.ps_start("train", self._setup.next_stop(step), REPORT_INTERVAL_S)
        if report.steps:
            self._record(report.steps)
        if report.failure is not None:
            self._faults.handle(report.failure, report.failed_step, self._setup, self._policy)
            return
        if not report.steps:
            raise TrainingFailed("the parameter server made no progress; see the server log")
        if state is not None:
            self._writer.queue(self._checkpoint_of(self._actors.ps_result(state)))
        if scores is not None:
            self._evaluate(scores)

    def _may_train_on(self, step: int) -> bool:
        """Whether the next train call can go out before this stop's bookkeeping: not at the end,
        and not while a cancel or a scale waits for the step boundary."""
        scale = self._scale.get()
        return (
            step < self._setup.total_steps
            and not self.cancel_requested.is_set()
            and scale in (None, self._setup.spec.num_workers)
        )

    def _record_ahead(self, timeout_s: float | None = None) -> None:
        """Wait for a train call sent ahead and record its steps (a fault in it is left to a restart)."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            report = self._actors.ps_result(ahead, timeout_s)
            if report.steps:
                self._record(report.steps)

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
        self.store.update(self.job_id, changes.add_steps(steps, self._samples, rate))

    @staticmethod
    def _throughput(window: list, steps: list[StepStats]) -> float:
        if len(window) >= 2:
            span = window[-1][0] - window[0][0]
            if span > 0:
                return sum(n for _, n in window[1:]) / span
        busy = sum(s.step_seconds for s in steps)
        return sum(s.samples for s in steps) / busy if busy > 0 else 0.0

    def _evaluate(self, sent: ray.ObjectRef | None = None) -> None:
        """Evaluate the parameters of this step (`sent`: the call already made)."""
        while True:  # each lost worker is replaced (or the restart limit fails the job)
            try:
                call, sent = sent or self._actors.ps_start("evaluate"), None
                loss, accuracy, _count, other = self._actors.ps_result(call)
                break
            except ParameterServerLost:
                raise
            except WorkerLost as exc:
                self._record_ahead()  # the train call behind the evaluation ran on the same workers
                self._faults.replace_workers(exc, self._step, self._setup, self._policy)
        self.metrics.record_eval(self.job_id, loss, accuracy)
        self.store.update(self.job_id, changes.set_eval(loss, accuracy, other), kind=pb.JobEvent.EVAL)
        self._evaluated_step = self._step

    # -- checkpoints ----------------------------------------------------------------------------

    def _checkpoint_of(self, state: TrainingState) -> Checkpoint:
        return self._setup.checkpoint_of(state, self._samples, self._policy.rollbacks)

    def _checkpoint(self, timeout_s: float | None = None) -> None:
        """Fetch the parameter server's state and write it with the job's counters."""
        state: TrainingState = self._actors.ps_call("state", timeout_s=timeout_s)
        self._writer.queue(self._checkpoint_of(state))

    def _checkpoint_quietly(self) -> None:
        """On shutdown: save progress made since the last checkpoint, within a bounded time."""
        try:  # first: the state must match the counters (nothing is ahead without actors)
            self._record_ahead(SHUTDOWN_CHECKPOINT_TIMEOUT_S)
        except Exception:
            log.warning("job %s: the last steps sent ahead did not report", self.job_id, exc_info=True)
        if self._actors.ps is None or self._setup is None or self._step == self._writer.queued_step:
            self._writer.flush()
            return
        try:
            self._checkpoint(timeout_s=SHUTDOWN_CHECKPOINT_TIMEOUT_S)
            self._writer.flush()
        except Exception:
            log.warning("job %s: no checkpoint at shutdown; it resumes from an older one", self.job_id)
        finally:
            self._writer.drain()  # an earlier write must not post after the job is re-queued

    def _progress_change(self, message: str) -> changes.JobChange:
        return changes.set_progress(
            message,
            total_steps=self._setup.total_steps,
            step=self._step,
            samples_trained=self._samples,
            epoch=self._setup.epoch_of(self._step),
            checkpoint_step=self._writer.written_step,
            rollbacks=self._policy.rollbacks,
            worker_restarts=self._policy.restarts,
            server_restarts=self._policy.server_restarts,
        )

    # -- plumbing -------------------------------------------------------------------------------

    def _check_cancel(self) -> None:
        if self.cancel_requested.is_set():
            raise JobCancelled()

    def _say(self, message: str) -> None:
        changes.show_message(self.store, self.job_id, message)

    def _finish(self, state: int, message: str, unless_cancelled: bool = False) -> int:
        """Record the job's final state; returns it. `unless_cancelled`: CANCELLED instead if a user's
        cancel came first (a shutdown's does not count), decided under the store's lock: CancelJob
        reads the state back after raising the flag, so its reply names the state the job really
        ends in. A disk that refuses the record leaves the state shown but not saved (`_saved`)."""
        self._writer.drain()
        ended: list[tuple[int, str]] = []

        def change(job: pb.Job) -> None:
            cancelled = unless_cancelled and self.cancelled_by_user.is_set()
            ended[:] = [(pb.CANCELLED, CANCELLED_NOTE) if cancelled else (state, message)]
            changes.set_state(*ended[0])(job)
            if ended[0][0] == pb.SUCCEEDED:  # its checkpoints go next: the final model supersedes them
                job.progress.checkpoint_step = 0

        try:
            self.store.update(self.job_id, change)
        except StateNotWritable as exc:  # shown all the same; the next start runs the job again
            self._saved = False
            log.error("job %s: its final state could not be saved: %s", self.job_id, exc.message)
            self.store.update(self.job_id, change, keep_unsaved=True)
        final, note = ended[0]
        self.metrics.finish_job(self.job_id, pb.JobState.Name(final).lower())
        log.info("job %s %s %s", self.job_id, pb.JobState.Name(final), note)
        return final

    def _release(self) -> None:
        """Stop the actors and give back the job's CPUs."""
        self._actors.stop()
        self._cpus.release()

    def actor_pids(self, timeout_s: float = 10.0) -> dict[str, int]:
        """{"worker-RANK": pid, "parameter-server": pid} of the running actors (for fault tests)."""
        return self._actors.pids(timeout_s)

    @staticmethod
    def model_path(config: ServerConfig, job_id: str) -> Path:
        return config.state_dir / "models" / f"{job_id}.npz"
