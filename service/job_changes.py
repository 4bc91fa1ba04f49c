"""The changes a running job makes to its record: each function returns a change for `JobStore.update`,
which applies it under the store's lock and publishes the result as an event."""

from __future__ import annotations

from collections.abc import Callable

from gradfleet.v1 import coordinator_pb2 as pb
from service.jobs import JobStore
from service.param_server import StepStats

JobChange = Callable[[pb.Job], None]


def set_state(state: int, message: str) -> JobChange:
    def change(job: pb.Job) -> None:
        job.state = state
        job.message = message

    return change


def set_message(message: str) -> JobChange:
    def change(job: pb.Job) -> None:
        job.message = message

    return change


def show_message(store: JobStore, job_id: str, message: str) -> None:
    """Show `message` on the job unless it already shows it (waits call this about once a second)."""
    if store.get(job_id).message != message:
        store.update(job_id, set_message(message))


def add_steps(steps: list[StepStats], samples_trained: int, rate: float) -> JobChange:
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


def scaled(num_workers: int, message: str) -> JobChange:
    def change(job: pb.Job) -> None:
        job.spec.num_workers = num_workers
        job.message = message

    return change


def set_checkpoint(step: int) -> JobChange:
    def change(job: pb.Job) -> None:
        job.progress.checkpoint_step = step

    return change


def recovered(message: str, restarts: int) -> JobChange:
    def change(job: pb.Job) -> None:
        job.message = message
        job.progress.worker_restarts = restarts

    return change


def set_eval(loss: float, accuracy: float, other: dict[str, float]) -> JobChange:
    def change(job: pb.Job) -> None:
        job.progress.eval_loss = loss
        job.progress.eval_accuracy = accuracy
        job.progress.has_eval = True
        job.progress.eval_top_k_accuracy = other.get("top_k_accuracy", float("nan"))
        job.progress.eval_label_accuracy = other.get("label_accuracy", float("nan"))
        job.progress.eval_mse = other.get("mse", float("nan"))
        job.progress.eval_mae = other.get("mae", float("nan"))
        job.progress.eval_r2 = other.get("r2", float("nan"))

    return change


def set_progress(
    message: str,
    *,
    total_steps: int,
    step: int,
    samples_trained: int,
    epoch: int,
    checkpoint_step: int,
    rollbacks: int,
    worker_restarts: int,
    server_restarts: int,
) -> JobChange:
    """All of the job's counters at once: after it (re)started or rolled back to a checkpoint."""

    def change(job: pb.Job) -> None:
        p = job.progress
        p.total_steps, p.step, p.samples_trained, p.epoch = total_steps, step, samples_trained, epoch
        p.checkpoint_step, p.rollbacks, p.worker_restarts = checkpoint_step, rollbacks, worker_restarts
        p.server_restarts = server_restarts
        job.message = message

    return change
