"""Evaluation figures in the CLI's output: accuracy only where it means something."""

from __future__ import annotations

import math

from gradfleet.v1 import coordinator_pb2 as pb
from service import job_changes, progress

NAN = math.nan


def _evaluated(loss: int, **figures: float) -> pb.Job:
    job = pb.Job(id="abc", spec=pb.JobSpec(name="r", epochs=2, loss=loss), state=pb.SUCCEEDED)
    job_changes.set_eval(0.0123, figures.pop("accuracy"), figures)(job)
    p = job.progress
    p.epoch, p.step, p.total_steps, p.loss = 2, 20, 20, 0.02
    return job


REGRESSION = dict(accuracy=NAN, top_k_accuracy=NAN, label_accuracy=NAN, mse=0.0125, mae=0.08, r2=0.85)
MULTI_LABEL = dict(accuracy=NAN, top_k_accuracy=NAN, label_accuracy=0.9125, mse=0.2, mae=0.3, r2=0.1)


def test_a_regression_shows_its_error_measures_and_no_accuracy() -> None:
    """watch's summary and event line, get, list and the progress bar show MSE/MAE/R^2, not 0 accuracy."""
    job = _evaluated(pb.HUBER, **REGRESSION)
    summary = progress.format_summary(job)
    assert summary == "job abc SUCCEEDED: test MSE 0.0125, MAE 0.0800, R^2 0.8500, loss 0.0123"
    event = progress.format_event(pb.JobEvent(kind=pb.JobEvent.EVAL, job=job))
    assert event == "eval at epoch 2 step 20: MSE 0.0125, MAE 0.0800, R^2 0.8500, loss 0.0123"
    block = progress.format_job(job)
    assert "eval:    loss 0.0123" in block and "metrics: MSE 0.0125, MAE 0.0800, R^2 0.8500" in block
    assert "accuracy" not in block + summary + event
    row = progress.format_job_table([job]).splitlines()[1].split()
    assert row[6] == "-"  # EVAL ACC
    job.state = pb.RUNNING
    assert progress.format_progress(job).endswith("loss 0.0200 eval MSE 0.0125")


def test_a_multi_label_job_shows_its_per_label_accuracy() -> None:
    job = _evaluated(pb.BINARY_CROSS_ENTROPY, **MULTI_LABEL)
    assert progress.format_summary(job) == "job abc SUCCEEDED: test per-label accuracy 0.9125, loss 0.0123"
    assert "eval:  per-label accuracy 0.9125, loss 0.0123" in progress.format_job(job)
    assert "metrics" not in progress.format_job(job)  # no top-k for float targets
    assert progress.format_job_table([job]).splitlines()[1].split()[6] == "0.9125"
    job.state = pb.RUNNING
    assert progress.format_progress(job).endswith("eval label acc 0.9125")


def test_a_classifier_still_shows_its_accuracy() -> None:
    job = _evaluated(pb.SOFTMAX_CROSS_ENTROPY, accuracy=0.875, top_k_accuracy=0.99, label_accuracy=NAN)
    assert progress.format_summary(job) == "job abc SUCCEEDED: test accuracy 0.8750, loss 0.0123"
    assert progress.format_job_table([job]).splitlines()[1].split()[6] == "0.8750"


def test_get_shows_the_worker_count_and_replacements() -> None:
    """`gradfleet get` shows the job's current worker count (set by `scale`), after its state."""
    job = _evaluated(pb.SOFTMAX_CROSS_ENTROPY, accuracy=0.5, label_accuracy=NAN)
    job.spec.num_workers = 3
    lines = progress.format_job(job).splitlines()
    assert lines[2:4] == ["state:   SUCCEEDED", "workers: 3"]
    job.progress.worker_restarts = 2
    assert "workers: 3 (2 replaced after failures)" in progress.format_job(job)
    job.progress.server_restarts = 1
    assert (
        "workers: 3 (2 replaced after failures; parameter server restarted 1 time)\n"
        in progress.format_job(job)
    )
    job.progress.worker_restarts = 0
    assert "workers: 3 (parameter server restarted 1 time)\n" in progress.format_job(job)
