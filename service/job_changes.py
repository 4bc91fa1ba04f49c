"""The changes a running job makes to its record: each function returns a change for `JobStore.update`,
which applies it under the store's lock and publishes the result as an event; and the notes it shows."""

from __future__ import annotations

from collections.abc import Callable

from gradfleet.v1 import coordinator_pb2 as pb
from service.checkpoints import Checkpoint
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


def resuming(step: int, samples_trained: int, epoch: int) -> JobChange:
    """The counters of the checkpoint a job resumes from, shown while its data and workers get ready
    (the record may hold later steps, trained after that checkpoint and lost with the coordinator)."""

    def change(job: pb.Job) -> None:
        p = job.progress
        p.step, p.samples_trained, p.epoch, p.checkpoint_step = step, samples_trained, epoch, step

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


_TEST_SPLIT = {"npz": "x_test/y_test", "idx": "t10k-* files", "csv": "CSV files have none"}


def no_test_note(uri: str) -> str:
    """Says a job trains without evaluation: its dataset has no test split."""
    where = _TEST_SPLIT.get(uri.partition(":")[0], "empty test split")
    return f"no test split in {uri} ({where}); training without evaluation"


def preparing(resume: Checkpoint | None) -> JobChange:
    """RUNNING while the data loads and the actors start, with the counters of the checkpoint the
    job resumes from (its record may hold later steps, lost with the coordinator that trained them)."""

    def change(job: pb.Job) -> None:
        if resume is not None:
            resuming(resume.step, resume.samples_trained, resume.epoch)(job)
        set_state(pb.RUNNING, preparing_note(job))(job)

    return change


def preparing_note(job: pb.Job) -> str:
    """The message while the data loads and the actors start; a job with a checkpoint on record says
    it resumes from it."""
    step = job.progress.checkpoint_step
    if not step:
        return "preparing data and workers"
    return f"preparing data and workers to resume from the checkpoint at step {step}"


def resume_note(ckpt: Checkpoint | None, skipped: list[str]) -> str:
    """Says which checkpoint a job resumed from, and which newer ones it skipped as unusable."""
    if ckpt is None:
        return ""
    note = f"resumed from the checkpoint at step {ckpt.step}"
    if skipped:
        note += " (skipped unusable newer ones: " + "; ".join(skipped) + ")"
    return note
