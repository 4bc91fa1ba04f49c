"""Every Prometheus metric the coordinator exports, declared in one place.

Naming: gradfleet_<noun>_<unit>, base units (seconds, ratios), counters end in _total. Per-job series
carry the label job_id and are removed a while after the job ends, so series do not grow with the
number of jobs ever run. Workers open no ports: their statistics come back with their gradients.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

from gradfleet.v1 import coordinator_pb2 as pb
from service.config import DEFAULT_METRICS_RETIRE_AFTER_S

STEP_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
STEP_PHASES = ("compute", "reduce", "apply", "wait")
JOB_STATE_NAMES = tuple(pb.JobState.Name(v).lower() for v in pb.JobState.values() if v)


class Metrics:
    """The coordinator's metrics, registered in `registry` (tests pass a fresh one)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        job_counts: Callable[[], dict[int, int]],
        retire_after_s: float = DEFAULT_METRICS_RETIRE_AFTER_S,
    ) -> None:
        self.registry = registry
        self.retire_after_s = retire_after_s
        job = ["job_id"]
        self.job_loss = Gauge(
            "gradfleet_job_loss", "Mean training loss of the latest step.", job, registry=registry
        )
        self.job_eval_loss = Gauge(
            "gradfleet_job_eval_loss",
            "Mean test-set loss at the latest evaluation.",
            job,
            registry=registry,
        )
        self.job_eval_accuracy = Gauge(
            "gradfleet_job_eval_accuracy",
            "Test-set accuracy (0-1) at the latest evaluation; absent for float targets.",
            job,
            registry=registry,
        )
        self.job_samples = Counter(
            "gradfleet_job_samples",
            "Training samples processed; rate() is throughput.",
            job,
            registry=registry,
        )
        self.job_steps = Counter("gradfleet_job_steps", "Optimizer steps applied.", job, registry=registry)
        self.job_samples_per_second = Gauge(
            "gradfleet_job_samples_per_second",
            "Recent training throughput.",
            job,
            registry=registry,
        )
        self.job_learning_rate = Gauge(
            "gradfleet_job_learning_rate",
            "Learning rate of the latest step.",
            job,
            registry=registry,
        )
        self.job_gradient_norm = Gauge(
            "gradfleet_job_gradient_norm",
            "Global L2 norm of the latest averaged gradient.",
            job,
            registry=registry,
        )
        self.job_workers = Gauge(
            "gradfleet_job_workers", "Worker actors taking part in the job.", job, registry=registry
        )
        self.job_step_seconds = Histogram(
            "gradfleet_job_step_seconds",
            "Wall time of one training step.",
            job,
            buckets=STEP_BUCKETS,
            registry=registry,
        )
        self.job_step_phase_seconds = Histogram(
            "gradfleet_job_step_phase_seconds",
            "Step time by phase: compute (slowest worker), reduce (gradient tree sum), "
            "apply (optimizer), wait (transfer and scheduling).",
            [*job, "phase"],
            buckets=STEP_BUCKETS,
            registry=registry,
        )
        self.jobs_submitted = Counter(
            "gradfleet_jobs_submitted", "Jobs accepted by SubmitJob.", registry=registry
        )
        self.jobs_finished = Counter(
            "gradfleet_jobs_finished",
            "Jobs that reached a terminal state, by state.",
            ["state"],
            registry=registry,
        )
        for state in ("succeeded", "failed", "cancelled"):
            self.jobs_finished.labels(state)
        self.grpc_requests = Counter(
            "gradfleet_grpc_requests",
            "gRPC calls by method and status code.",
            ["method", "code"],
            registry=registry,
        )
        self.grpc_latency = Histogram(
            "gradfleet_grpc_request_duration_seconds",
            "gRPC call latency (whole stream for streaming calls).",
            ["method"],
            buckets=RPC_BUCKETS,
            registry=registry,
        )
        self.queue_length = Gauge(
            "gradfleet_queue_length", "Jobs waiting for a slot to run.", registry=registry
        )
        self.queue_oldest_age = Gauge(
            "gradfleet_queue_oldest_age_seconds",
            "How long the longest-waiting job has been QUEUED this time (0 when none waits).",
            registry=registry,
        )
        self.workers_alive = Gauge(
            "gradfleet_workers_alive",
            "Live worker actors of running jobs, all jobs together.",
            registry=registry,
        )
        self.param_server_apply = Histogram(
            "gradfleet_param_server_apply_seconds",
            "Parameter-server time to apply one averaged gradient (optimizer step), all jobs.",
            buckets=STEP_BUCKETS,
            registry=registry,
        )
        registry.register(_JobStateCollector(job_counts))
        self._declare_recovery_metrics(registry)
        self._per_job = [
            self.job_loss,
            self.job_eval_loss,
            self.job_eval_accuracy,
            self.job_samples,
            self.job_steps,
            self.job_samples_per_second,
            self.job_learning_rate,
            self.job_gradient_norm,
            self.job_workers,
            self.job_step_seconds,
            self.job_checkpoint_time,
        ]
        self._timers: list[threading.Timer] = []

    def read_live_values(
        self,
        queue_length: Callable[[], float],
        queue_oldest_age: Callable[[], float],
        workers_alive: Callable[[], float],
    ) -> None:
        """Service-wide gauges read at scrape time from their owners, so they can never drift."""
        self.queue_length.set_function(queue_length)
        self.queue_oldest_age.set_function(queue_oldest_age)
        self.workers_alive.set_function(workers_alive)

    def record_call(self, method: str, code: str, seconds: float) -> None:
        """Interceptor callback: one finished gRPC call."""
        self.grpc_requests.labels(method, code).inc()
        self.grpc_latency.labels(method).observe(seconds)

    def start_job(self, job_id: str, workers: int) -> None:
        """Create the job's series at zero so rate() and dashboards have data from the start."""
        self.job_samples.labels(job_id)
        self.job_steps.labels(job_id)
        self.job_workers.labels(job_id).set(workers)
        for phase in STEP_PHASES:
            self.job_step_phase_seconds.labels(job_id, phase)

    def record_steps(self, job_id: str, steps: list, samples_per_second: float) -> None:
        """Account a batch of StepStats from the parameter server."""
        if not steps:
            return
        for s in steps:
            self.job_step_seconds.labels(job_id).observe(s.step_seconds)
            for phase, value in zip(
                STEP_PHASES,
                (s.compute_seconds, s.reduce_seconds, s.apply_seconds, s.wait_seconds),
                strict=False,
            ):
                self.job_step_phase_seconds.labels(job_id, phase).observe(value)
            self.param_server_apply.observe(s.apply_seconds)
        last = steps[-1]
        self.job_samples.labels(job_id).inc(sum(s.samples for s in steps))
        self.job_steps.labels(job_id).inc(len(steps))
        self.job_loss.labels(job_id).set(last.loss)
        self.job_learning_rate.labels(job_id).set(last.learning_rate)
        self.job_gradient_norm.labels(job_id).set(last.grad_norm)
        self.job_samples_per_second.labels(job_id).set(samples_per_second)

    def record_eval(self, job_id: str, loss: float, accuracy: float) -> None:
        """The latest test-set evaluation of the job; a NaN accuracy (regression and multi-label
        jobs have none) leaves the accuracy series out rather than showing a 0."""
        self.job_eval_loss.labels(job_id).set(loss)
        if math.isfinite(accuracy):
            self.job_eval_accuracy.labels(job_id).set(accuracy)

    def record_divergence(self, job_id: str, loss: float | None) -> None:
        """Show a step's non-finite mean `loss` in gradfleet_job_loss, which only applied steps set
        otherwise, so the GradfleetLossNotFinite alert sees the divergence. It stays until the next
        applied step (after a rollback) or until the job's series retire (after a failure). None
        or a finite loss (the gradient diverged, not the loss) leaves the gauge alone."""
        if loss is not None and not math.isfinite(loss):
            self.job_loss.labels(job_id).set(loss)

    def finish_job(self, job_id: str, state_name: str, retire_after_s: float | None = None) -> None:
        """Count the outcome; drop the job's series after `retire_after_s` (None: the configured
        delay, 0: now)."""
        retire_after_s = self.retire_after_s if retire_after_s is None else retire_after_s
        self.jobs_finished.labels(state_name).inc()
        self.job_workers.labels(job_id).set(0)
        if retire_after_s <= 0:
            self.retire_job(job_id)
            return
        timer = threading.Timer(retire_after_s, self.retire_job, args=(job_id,))
        timer.daemon = True
        timer.start()
        self._timers = [t for t in self._timers if t.is_alive()] + [timer]

    def retire_job(self, job_id: str) -> None:
        """Remove every series labelled with `job_id` (a no-op for series never created)."""
        for metric in self._per_job:
            with contextlib.suppress(KeyError):
                metric.remove(job_id)
        for phase in STEP_PHASES:
            with contextlib.suppress(KeyError):
                self.job_step_phase_seconds.remove(job_id, phase)

    def _declare_recovery_metrics(self, registry: CollectorRegistry) -> None:
        self.job_checkpoint_time = Gauge(
            "gradfleet_job_checkpoint_timestamp_seconds",
            "Unix time of the job's latest complete checkpoint; time() minus it is the checkpoint age.",
            ["job_id"],
            registry=registry,
        )
        self.checkpoints_written = Counter(
            "gradfleet_checkpoints_written", "Job checkpoints written to the state folder.", registry=registry
        )
        self.worker_replacements = Counter(
            "gradfleet_worker_replacements",
            "Dead worker actors replaced while a job ran (Progress.worker_restarts); parameter-server "
            "restarts are gradfleet_server_restarts_total.",
            registry=registry,
        )
        self.server_restarts = Counter(
            "gradfleet_server_restarts",
            "Restarts of a job's parameter server, with new workers, from its last checkpoint after it "
            "died or new workers did not start (Progress.server_restarts).",
            registry=registry,
        )
        self.divergence_rollbacks = Counter(
            "gradfleet_divergence_rollbacks",
            "Rollbacks to a checkpoint after a non-finite loss or gradient (on_divergence: ROLLBACK).",
            registry=registry,
        )

    def set_job_workers(self, job_id: str, workers: int) -> None:
        """The job now trains with `workers` worker actors (after a scale)."""
        self.job_workers.labels(job_id).set(workers)

    def record_checkpoint(self, job_id: str) -> None:
        """A complete checkpoint of the job was written just now."""
        self.checkpoints_written.inc()
        self.job_checkpoint_time.labels(job_id).set_to_current_time()

    def close(self) -> None:
        """Cancel pending retirements (the coordinator is stopping)."""
        for timer in self._timers:
            timer.cancel()


class _JobStateCollector:
    """gradfleet_jobs{state}: read from the job store at scrape time, so it can never drift."""

    def __init__(self, job_counts: Callable[[], dict[int, int]]) -> None:
        self._job_counts = job_counts

    def collect(self):
        family = GaugeMetricFamily(
            "gradfleet_jobs", "Jobs known to the coordinator, by state.", labels=["state"]
        )
        for state, count in self._job_counts().items():
            family.add_metric([pb.JobState.Name(state).lower()], count)
        yield family

    def describe(self):
        return []
