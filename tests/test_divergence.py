"""Divergence after real checkpoints, on datasets built so that one chosen step blows up: the default
policy fails the job and keeps the last good checkpoint downloadable; ROLLBACK resumes from that
checkpoint with its optimizer state and a lower learning rate."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from gradfleet.v1 import coordinator_pb2 as pb
from service.checkpoints import CheckpointStore
from service.spec import spec_from_dict
from tests.helpers import (
    assert_identical,
    model_weights,
    reference_weights,
    small_spec,
    wait_for,
    write_blobs,
)
from tests.test_recovery import metrics_text
from workers.batches import epoch_permutation

pytestmark = [pytest.mark.integration, pytest.mark.ray]

N_TRAIN, BATCH, SEED = 1000, 50, 7  # 20 steps per epoch
BAD_STEP = 13  # the first step whose batch holds the planted sample; checkpoints at steps 5 and 10
LEARNING_RATE = 2.0**66  # harmless while every gradient is exactly 0; overflows once one is not
LR_FACTOR = 2.0**-70  # powers of two: the scaled rate (1/16) is exact, so a reference can match it


def planted_index(step: int) -> int:
    """The training sample that the first batch of the 1-based `step` of epoch 1 starts with."""
    return int(epoch_permutation(SEED, 1, N_TRAIN)[(step - 1) * BATCH])


def write_nan_at_step(path: Path) -> Path:
    """Blobs whose one sample at BAD_STEP has features near float32's maximum: its logits overflow,
    so that step's loss is NaN whatever the learning rate."""
    write_blobs(path, n_train=N_TRAIN, features=20)
    with np.load(path) as data:
        arrays = dict(data)
    arrays["x_train"][planted_index(BAD_STEP)] = 3e38
    np.savez(path, **arrays)
    return path


def write_flat(path: Path) -> Path:
    """Regression data with every input and target 0 except one sample at BAD_STEP: all gradients
    are exactly 0 before it, so only the learning rate decides whether its step blows up."""
    x, y = np.zeros((N_TRAIN, 4), np.float32), np.zeros(N_TRAIN, np.float32)
    bad = planted_index(BAD_STEP)
    x[bad, 0], y[bad] = 1.0, 0.5  # a non-integer target: float targets, not class labels
    np.savez(path, x_train=x, y_train=y, x_test=x[:50], y_test=y[:50])
    return path


def flat_spec(**overrides) -> pb.JobSpec:
    spec = {
        "name": "flat",
        "dataset": {"uri": "npz:flat.npz", "preprocessing": "NONE"},
        "layers": [{"units": 1, "activation": "IDENTITY"}],
        "loss": "MEAN_SQUARED_ERROR",
        "optimizer": {"kind": "ADAM", "learningRate": LEARNING_RATE},
        "batchSize": BATCH,
        "epochs": 3,
        "numWorkers": 2,
        "seed": SEED,
        "microShards": 4,
        "checkpointEverySteps": 5,
    }
    return spec_from_dict(spec | overrides)


def test_a_nan_loss_fails_the_job_and_its_last_checkpoint_stays_downloadable(
    client, coordinator, tmp_path
) -> None:
    """By default a NaN loss after two checkpoints fails the job with the epoch, step, rate and
    advice, and DownloadModel serves the finite weights of the checkpoint before it."""
    write_nan_at_step(coordinator.config.data_root / "nan.npz")
    spec = small_spec(
        "npz:nan.npz",
        dataset={"uri": "npz:nan.npz", "preprocessing": "NONE"},
        epochs=3,
        checkpointEverySteps=5,
    )
    done = wait_for(client, client.submit(spec).id, timeout_s=120)
    assert done.state == pb.FAILED
    assert done.message == (
        f"loss became NaN at epoch 1 step {BAD_STEP} (learning rate 0.01); lower the learning rate or "
        "enable clipping; the checkpoint at step 10 stays downloadable"
    )
    assert done.progress.step == BAD_STEP - 1 and done.progress.checkpoint_step == 10
    loss = coordinator.metrics.registry.get_sample_value("gradfleet_job_loss", {"job_id": done.id})
    assert loss is not None and math.isnan(loss)  # what the loss-not-finite alert fires on
    model = model_weights(client, done.id, tmp_path / "failed.npz")
    saved, skipped = CheckpointStore(coordinator.config.state_dir, done.id).latest()
    assert saved.step == 10 and skipped == []
    from_disk = saved.model_arrays(spec_json="")
    for name, value in model.items():
        assert np.isfinite(value).all(), name
        assert value.tobytes() == from_disk[name].tobytes(), name


def test_rollback_resumes_from_the_last_checkpoint_with_its_adam_state_and_a_lower_rate(
    client, coordinator, tmp_path
) -> None:
    """With on_divergence ROLLBACK an overflow at step 14 rolls back to the checkpoint at step 10
    (parameters and Adam moments and step count) with the rate scaled, streams a ROLLBACK event,
    counts it, and ends with exactly the weights of a run at the scaled rate from the start."""
    write_flat(coordinator.config.data_root / "flat.npz")
    job = client.submit(flat_spec(onDivergence="ROLLBACK", rollbackLrFactor=LR_FACTOR, maxRollbacks=2))
    events = list(client.watch(job.id))
    done = events[-1].job
    assert done.state == pb.SUCCEEDED, done.message
    rollbacks = [e.job for e in events if e.kind == pb.JobEvent.ROLLBACK]
    assert [r.message for r in rollbacks] == [
        f"loss became infinite at epoch 1 step {BAD_STEP + 1} (learning rate 7.38e+19); lower the "
        "learning rate or enable clipping; rolled back to the checkpoint at step 10 with the learning "
        "rate scaled by 8.47e-22 (rollback 1 of 2)"
    ]
    assert rollbacks[0].progress.step == 10 and rollbacks[0].progress.rollbacks == 1
    assert done.progress.rollbacks == 1 and done.progress.learning_rate == 0.0625
    assert done.progress.samples_trained == 3 * N_TRAIN  # the abandoned steps are not counted
    assert "gradfleet_divergence_rollbacks_total 1.0" in metrics_text(coordinator)
    # Zero gradients before BAD_STEP leave the weights alone at any rate, so a run at the scaled
    # rate from the start computes exactly what a correct rollback to step 10 computes; a fresh or
    # unrestored Adam state (step count, moments) gives other bias corrections and other weights.
    scaled = flat_spec(optimizer={"kind": "ADAM", "learningRate": 0.0625})
    data = coordinator.config.data_root / "flat.npz"
    got = model_weights(client, job.id, tmp_path / "rolled.npz")
    assert_identical(got, reference_weights(client, scaled, data, tmp_path))
    assert got["layer_0_bias"][0] != 0.0  # the planted sample did train the model


# (id, x_train, the largest magnitude the message gives): inputs too large for the model at all
HUGE_INPUTS = [
    ("float32-near-max", np.full((200, 4), 3e38, np.float32), "3e+38"),
    ("int64-near-2-62", np.full((200, 4), 2**62 - 1, np.int64) * np.array([1, -1, 1, -1]), "4.61e+18"),
]


@pytest.mark.parametrize(("x", "largest"), [r[1:] for r in HUGE_INPUTS], ids=[r[0] for r in HUGE_INPUTS])
def test_a_non_finite_first_step_blames_the_input_scale(client, coordinator, x, largest) -> None:
    """Inputs so large that the very first step (the initial weights, no update yet) is not finite:
    the job fails saying the learning rate is not the cause, with the largest input magnitude and
    the preprocessing that would fix it, rather than "lower the learning rate"."""
    np.savez(coordinator.config.data_root / "huge.npz", x_train=x, y_train=np.arange(200) % 3)
    spec = small_spec("npz:huge.npz", dataset={"uri": "npz:huge.npz", "preprocessing": "NONE"}, epochs=1)
    done = wait_for(client, client.submit(spec).id, timeout_s=120)
    assert done.state == pb.FAILED
    assert re.fullmatch(
        r"(loss|gradient) became (NaN|infinite) at epoch 1 step 1, before any update, so the learning rate "
        r"\(0\.01\) is not the cause: the inputs are probably too large \(the largest \|x\| in the training "
        rf"set is {re.escape(largest)}, with preprocessing NONE\); scale them with dataset\.preprocessing "
        "SCALE or STANDARDIZE",
        done.message,
    ), done.message
    assert done.progress.step == 0
