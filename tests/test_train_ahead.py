"""The runner sends the parameter server its next train call before it records the last report, so
training does not wait for the job store and metrics; a stop in between still checkpoints counters
that match the weights."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from gradfleet.v1 import coordinator_pb2 as pb
from service.checkpoints import CheckpointStore
from service.config import ServerConfig
from service.job_actors import JobActors
from service.runner import JobRunner
from tests.helpers import small_spec, wait_for, write_blobs
from tests.test_restart import running_coordinator

pytestmark = [pytest.mark.integration, pytest.mark.ray]
BATCH = 10


@pytest.fixture
def config(ray_session, tmp_path: Path) -> ServerConfig:
    data_root = tmp_path / "data"
    data_root.mkdir()
    return ServerConfig(port=0, metrics_port=-1, state_dir=tmp_path / "state", data_root=data_root)


def long_epochs_spec(config: ServerConfig):
    """A job whose train calls end on the 0.5 s report interval: 5,000 steps an epoch, no test split,
    no checkpoint before the epoch's end."""
    rng = np.random.default_rng(0)
    rows = 50_000
    x, y = rng.normal(size=(rows, 20)).astype(np.float32), rng.integers(0, 3, rows)
    np.savez(config.data_root / "train_only.npz", x_train=x, y_train=y)
    return small_spec(
        "npz:train_only.npz", batchSize=BATCH, epochs=100, numWorkers=1, checkpointEverySteps=10**6
    )


def log_calls_and_records(monkeypatch) -> list[str]:
    """The parameter-server methods the runner starts and its "record"s, in order, as they happen."""
    events: list[str] = []
    start, record = JobActors.ps_start, JobRunner._record
    monkeypatch.setattr(JobActors, "ps_start", lambda self, m, *a: events.append(m) or start(self, m, *a))
    monkeypatch.setattr(
        JobRunner, "_record", lambda self, steps: events.append("record") or record(self, steps)
    )
    return events


def test_the_next_train_call_goes_out_before_the_last_report_is_recorded(config, monkeypatch) -> None:
    """With nothing due but training, each report is recorded while the parameter server trains on."""
    events = log_calls_and_records(monkeypatch)
    with running_coordinator(config) as client:
        job = client.submit(long_epochs_spec(config))
        while events.count("record") < 4:
            time.sleep(0.05)
        client.cancel(job.id)
    records = [i for i, event in enumerate(events) if event == "record"]
    # The first call, then before each report is recorded the call after it.
    assert events[:5] == ["train", "train", "record", "train", "record"], events
    assert all(events[i - 1] == "train" for i in records[:4]), events


def test_an_epoch_end_sends_state_evaluation_and_next_train_call_together(config, monkeypatch) -> None:
    """At a checkpoint and evaluation point the parameter server gets the three calls at once, in
    that order (state and evaluation are of the same step), before the report is recorded."""
    events = log_calls_and_records(monkeypatch)
    write_blobs(config.data_root / "blobs.npz", n_train=600)
    with running_coordinator(config) as client:
        job = wait_for(client, client.submit(small_spec("npz:blobs.npz", batchSize=10, epochs=3)).id)
    assert job.state == pb.SUCCEEDED, job.message
    # Epochs 1 and 2 end with the three calls, then the record; epoch 3 ends the job (no next call).
    assert events.count("state") == 2 and events.count("evaluate") == 3, events
    first = events.index("state")
    assert events[first - 1 : first + 4] == ["train", "state", "evaluate", "train", "record"], events


def test_a_stop_while_a_train_call_is_ahead_checkpoints_matching_counters(config, monkeypatch) -> None:
    """The shutdown checkpoint comes after the train call sent ahead: its steps are recorded first, so
    the checkpoint's samples counter matches its step."""
    recorded_enough = threading.Event()
    record = JobRunner._record

    def slow_record(self, steps):
        record(self, steps)
        if steps[-1].step >= 200 and not recorded_enough.is_set():
            recorded_enough.set()
            time.sleep(1.0)  # the stop comes now, while the call sent ahead trains

    monkeypatch.setattr(JobRunner, "_record", slow_record)
    with running_coordinator(config) as client:
        job = client.submit(long_epochs_spec(config))
        assert recorded_enough.wait(timeout=60)
    ckpt, skipped = CheckpointStore(config.state_dir, job.id).latest()
    assert ckpt is not None and not skipped
    assert ckpt.step > 200
    assert ckpt.samples_trained == ckpt.step * BATCH
