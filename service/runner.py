"""Runs one job from start to finish on Ray: data into the object store, workers, parameter server,
progress into the job store and metrics, the model onto disk. Runs on its own thread, never on an RPC
thread; cancellation is a threading.Event checked between parameter-server calls (about 0.5 s apart).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray

from gradfleet.v1 import coordinator_pb2 as pb
from service.config import ServerConfig
from service.datasets import Dataset, DatasetError, compute_normalization, load_dataset
from service.errors import GradfleetError, TrainingFailed
from service.export import model_arrays, write_model
from service.jobs import JobStore
from service.metrics import Metrics
from service.param_server import ParameterServerActor, StepStats
from service.spec import spec_to_json, validate_against_dataset
from workers.batches import steps_per_epoch
from workers.group import WorkerGroup, WorkerLost
from workers.nn import make_optimizer, make_schedule
from workers.placement import Unplaceable, reserve_workers
from workers.worker import ModelPlan

log = logging.getLogger(__name__)

REPORT_INTERVAL_S = 0.5  # how often the parameter server reports back (progress, cancel checks)
THROUGHPUT_WINDOW_S = 5.0


class JobCancelled(Exception):
    pass


@dataclass(frozen=True)
class PreparedData:
    dataset: Dataset
    offset: np.ndarray
    scale: np.ndarray


class DatasetCache:
    """Keeps the most recently used datasets in memory: reading Fashion-MNIST's gzip files takes
    seconds, and a coordinator often runs many jobs on the same data."""

    def __init__(self, config: ServerConfig, capacity: int = 2) -> None:
        self._config = config
        self._capacity = capacity
        self._lock = threading.Lock()
        self._items: dict[str, Dataset] = {}

    def load(self, uri: str) -> Dataset:
        with self._lock:
            if uri in self._items:
                self._items[uri] = self._items.pop(uri)  # most recent last
                return self._items[uri]
        dataset = load_dataset(uri, self._config.data_root, extra_search=self._config.dataset_search)
        with self._lock:
            self._items[uri] = dataset
            while len(self._items) > self._capacity:
                self._items.pop(next(iter(self._items)))
        return dataset


def _lower(enum_type, value: int) -> str:
    return enum_type.Name(value).lower()


def model_plan(spec: pb.JobSpec, num_features: int) -> ModelPlan:
    return ModelPlan(
        layer_sizes=(num_features, *(layer.units for layer in spec.layers)),
        activations=tuple(_lower(pb.Activation, layer.activation) for layer in spec.layers),
        loss=_lower(pb.Loss, spec.loss),
        batch_size=spec.batch_size,
        num_microshards=spec.micro_shards,
        seed=spec.seed,
        slopes=tuple(layer.slope if layer.HasField("slope") else 0.01 for layer in spec.layers),
        dropout=tuple(layer.dropout for layer in spec.layers),
        initializers=tuple(_initializer(layer) for layer in spec.layers),
        label_smoothing=spec.label_smoothing,
        huber_delta=spec.huber_delta,
        top_k=spec.eval_top_k,
    )


def _initializer(layer: pb.LayerSpec) -> str:
    if layer.init == pb.INITIALIZER_UNSPECIFIED:
        return "auto"
    return _lower(pb.Initializer, layer.init)


def build_optimizer(spec: pb.JobSpec, num_params: int, num_train: int):
    """A factory for the optimizer and the learning-rate schedule a (defaults-filled) spec asks for.

    The optimizer is built where it runs (the parameter server), so its state arrays are its own.
    """
    opt = spec.optimizer
    kind = _lower(pb.OptimizerKind, opt.kind)
    optimizer = functools.partial(make_optimizer, kind, num_params, np.float32, **_hyper(kind, opt))
    per_epoch = steps_per_epoch(num_train, spec.batch_size)
    sched = opt.schedule
    schedule = make_schedule(
        _lower(pb.ScheduleKind, sched.kind),
        opt.learning_rate,
        steps_per_epoch=per_epoch,
        total_steps=per_epoch * spec.epochs,
        gamma=sched.gamma,
        step_epochs=sched.step_epochs,
        min_lr=sched.min_learning_rate,
        milestones=tuple(sched.milestones),
        warmup_steps=sched.warmup_steps,
        pct_start=sched.pct_start,
        div_factor=sched.div_factor,
        final_div_factor=sched.final_div_factor,
    )
    return optimizer, schedule


def _hyper(kind: str, opt: pb.OptimizerSpec) -> dict:
    """The constructor arguments of the optimizer `kind` from a defaults-filled spec."""
    hyper: dict = {"weight_decay": opt.weight_decay}
    if kind in ("momentum", "nesterov"):
        hyper["momentum"] = opt.momentum
    if kind in ("adam", "adamw"):
        hyper |= {"beta1": opt.beta1, "beta2": opt.beta2, "epsilon": opt.epsilon}
    if kind == "rmsprop":
        hyper |= {"rho": opt.rho, "epsilon": opt.epsilon}
    if kind == "adagrad":
        hyper["epsilon"] = opt.epsilon
    return hyper


def prepare_data(spec: pb.JobSpec, cache: DatasetCache) -> PreparedData:
    ds = cache.load(spec.dataset.uri)
    n_train = spec.dataset.max_train_samples or len(ds.y_train)
    n_test = spec.dataset.max_test_samples or (0 if ds.y_test is None else len(ds.y_test))
    ds = Dataset(
        x_train=ds.x_train[:n_train],
        y_train=ds.y_train[:n_train],
        x_test=None if ds.x_test is None else ds.x_test[:n_test],
        y_test=None if ds.y_test is None else ds.y_test[:n_test],
        num_classes=ds.num_classes,
        source=ds.source,
    )
    method = _lower(pb.Preprocessing, spec.dataset.preprocessing)
    norm = compute_normalization(ds.x_train, method)
    return PreparedData(ds, norm.offset, norm.scale)


class JobRunner:
    """Trains one job; `run` returns when the job reached a terminal state."""

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
        self.shutting_down = threading.Event()  # set with cancel_requested: re-queue, not cancel
        self._group: WorkerGroup | None = None
        self._ps = None

    @property
    def num_workers(self) -> int:
        """Worker actors this job holds right now (0 before they start and after release)."""
        group = self._group
        return group.size if group is not None else 0

    def run(self) -> None:
        spec = self.store.get(self.job_id).spec
        self.store.update(self.job_id, _set_state(pb.RUNNING, "preparing data and workers"))
        try:
            self._train(spec)
        except JobCancelled:
            if self.shutting_down.is_set():
                note = "interrupted by a coordinator shutdown; it restarts when the coordinator does"
                self.store.update(self.job_id, _set_state(pb.QUEUED, note))
                self.metrics.retire_job(self.job_id)
            else:
                self._finish(pb.CANCELLED, "cancelled by request")
        except GradfleetError as exc:
            self._finish(pb.FAILED, exc.message)
        except DatasetError as exc:
            self._finish(pb.FAILED, str(exc))
        except Unplaceable as exc:
            self._finish(pb.FAILED, str(exc))
        except WorkerLost as exc:
            self._finish(pb.FAILED, f"{exc}; the job stopped (worker recovery arrives with checkpoints)")
        except Exception as exc:  # the coordinator must survive anything a job does
            log.exception("job %s failed unexpectedly", self.job_id)
            self._finish(pb.FAILED, f"internal error: {type(exc).__name__}: {exc}; see the server log")
        finally:
            self._release()

    def _train(self, spec: pb.JobSpec) -> None:
        data = prepare_data(spec, self.cache)
        ds = data.dataset
        validate_against_dataset(
            spec, ds.x_train.shape[1], ds.num_classes, len(ds.y_train), self.config.max_params
        )
        plan = model_plan(spec, ds.x_train.shape[1])
        net = plan.network()
        params = net.init_params(np.random.default_rng(spec.seed))
        optimizer, schedule = build_optimizer(spec, net.num_params, len(ds.y_train))
        self._check_cancel()
        refs = {
            "x_train": ray.put(ds.x_train),
            "y_train": ray.put(ds.y_train),
            "x_test": ray.put(ds.x_test),
            "y_test": ray.put(ds.y_test),
            "offset": ray.put(data.offset),
            "scale": ray.put(data.scale),
        }
        self._group = WorkerGroup.start(plan, spec.num_workers, refs, placement_group=self._reserve(spec))
        self._check_cancel()
        self._ps = ParameterServerActor.remote(
            self._group,
            params,
            optimizer,
            schedule,
            len(ds.y_train),
            spec.epochs,
            self.config.step_timeout_s,
            clip_norm=spec.optimizer.clip_norm,
        )
        self.metrics.start_job(self.job_id, spec.num_workers)
        total = steps_per_epoch(len(ds.y_train), spec.batch_size) * spec.epochs
        self.store.update(self.job_id, _set_progress_total(total, ""))
        self._loop(spec, total, has_test=ds.y_test is not None and len(ds.y_test) > 0)
        final = self._call(self._ps.params.remote())
        arrays = model_arrays(net.named_parameters(final), data.offset, data.scale, spec_to_json(spec))
        write_model(self.model_path(self.config, self.job_id), arrays)
        self._finish(pb.SUCCEEDED, "")

    def _reserve(self, spec: pb.JobSpec):
        """Gang-reserve the workers' CPUs; while there is no room the job shows QUEUED with the reason."""
        shown = [""]  # the reason last written to the job record

        def on_wait(reason: str) -> None:
            self._check_cancel()
            if reason != shown[0]:
                self.store.update(self.job_id, _set_state(pb.QUEUED, reason))
                shown[0] = reason

        group = reserve_workers(
            spec.num_workers,
            self.config.worker_wait_s,
            fail_if_too_small=not self.config.autoscaling,
            on_wait=on_wait,
        )
        if shown[0]:
            self.store.update(self.job_id, _set_state(pb.RUNNING, "starting workers"))
        return group

    def _loop(self, spec: pb.JobSpec, total: int, has_test: bool) -> None:
        per_epoch = total // spec.epochs
        every = spec.eval_every_steps
        step, window = 0, []  # window: (time, samples) for throughput
        while step < total:
            self._check_cancel()
            next_eval = step + every - step % every if every else total
            report = self._call(self._ps.train.remote(next_eval, REPORT_INTERVAL_S))
            if not report.steps:
                raise TrainingFailed("the parameter server made no progress; see the server log")
            now = time.monotonic()
            window = [(t, n) for t, n in window if now - t <= THROUGHPUT_WINDOW_S]
            window.append((now, sum(s.samples for s in report.steps)))
            step = report.steps[-1].step
            rate = self._throughput(window, report.steps)
            self.metrics.record_steps(self.job_id, report.steps, rate)
            self.store.update(self.job_id, _add_steps(report.steps, rate))
            if has_test and (step % per_epoch == 0 or (every and step % every == 0) or step >= total):
                self._evaluate()

    @staticmethod
    def _throughput(window: list, steps: list[StepStats]) -> float:
        if len(window) >= 2:
            span = window[-1][0] - window[0][0]
            if span > 0:
                return sum(n for _, n in window[1:]) / span
        busy = sum(s.step_seconds for s in steps)
        return sum(s.samples for s in steps) / busy if busy > 0 else 0.0

    def _evaluate(self) -> None:
        loss, accuracy, _count, other = self._call(self._ps.evaluate.remote())
        self.metrics.record_eval(self.job_id, loss, accuracy)
        self.store.update(self.job_id, _set_eval(loss, accuracy, other), kind=pb.JobEvent.EVAL)

    def _call(self, ref):
        """ray.get with a bound: a stuck cluster fails the job instead of hanging it."""
        try:
            return ray.get(ref, timeout=self.config.step_timeout_s * 2 + 60)
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
            raise WorkerLost("the parameter server did not answer in time") from exc
        except ray.exceptions.RayActorError as exc:
            raise WorkerLost(f"the parameter server died: {exc}") from exc

    def _check_cancel(self) -> None:
        if self.cancel_requested.is_set():
            raise JobCancelled()

    def _finish(self, state: int, message: str) -> None:
        self.store.update(self.job_id, _set_state(state, message))
        self.metrics.finish_job(self.job_id, pb.JobState.Name(state).lower())
        log.info("job %s %s %s", self.job_id, pb.JobState.Name(state), message)

    def _release(self) -> None:
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

    @staticmethod
    def model_path(config: ServerConfig, job_id: str) -> Path:
        return config.state_dir / "models" / f"{job_id}.npz"


def _set_state(state: int, message: str):
    def change(job: pb.Job) -> None:
        job.state = state
        job.message = message

    return change


def _set_progress_total(total: int, message: str):
    def change(job: pb.Job) -> None:
        job.progress.total_steps = total
        job.message = message

    return change


def _add_steps(steps: list[StepStats], rate: float):
    def change(job: pb.Job) -> None:
        last = steps[-1]
        p = job.progress
        p.epoch = last.epoch
        p.step = last.step
        p.samples_trained += sum(s.samples for s in steps)
        p.loss = last.loss
        p.learning_rate = last.learning_rate
        p.samples_per_second = rate

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
