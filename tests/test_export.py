"""The downloaded model of a real job: arrays, dtypes, shapes, spec and preprocessing, and the job's
server-set timestamps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from google.protobuf import json_format

from gradfleet.v1 import coordinator_pb2 as pb
from tests.helpers import small_spec, wait_for, write_blobs

pytestmark = [pytest.mark.integration, pytest.mark.ray]
FEATURES, HIDDEN, CLASSES = 20, 16, 3


def _train_and_download(client, coordinator, tmp_path: Path, preprocessing: str):
    blobs = write_blobs(coordinator.config.data_root / "blobs.npz", features=FEATURES, classes=CLASSES)
    spec = small_spec(
        "npz:blobs.npz", epochs=1, dataset={"uri": "npz:blobs.npz", "preprocessing": preprocessing}
    )
    job = wait_for(client, client.submit(spec).id)
    assert job.state == pb.SUCCEEDED, job.message
    path = tmp_path / f"{preprocessing}.npz"
    client.download(job.id, path)
    with np.load(path, allow_pickle=False) as model, np.load(blobs) as data:
        return job, {name: model[name] for name in model.files}, data["x_train"]


def test_exported_arrays_have_the_documented_names_dtypes_and_shapes(client, coordinator, tmp_path) -> None:
    """A 20-16-3 model exports float32 (fan_in, fan_out) weights and (fan_out,) biases, per-feature
    float32 input_offset and input_scale, and a spec_json that parses back to the job's JobSpec."""
    job, model, _ = _train_and_download(client, coordinator, tmp_path, "STANDARDIZE")
    expected = {
        "layer_0_weight": (FEATURES, HIDDEN),
        "layer_0_bias": (HIDDEN,),
        "layer_1_weight": (HIDDEN, CLASSES),
        "layer_1_bias": (CLASSES,),
        "input_offset": (FEATURES,),
        "input_scale": (FEATURES,),
    }
    assert set(model) == set(expected) | {"spec_json"}
    for name, shape in expected.items():
        assert model[name].dtype == np.float32 and model[name].shape == shape, name
    parsed = json_format.Parse(str(model["spec_json"]), pb.JobSpec())
    assert parsed == client.get(job.id).spec
    assert parsed.dataset.preprocessing == pb.STANDARDIZE


def test_standardize_exports_the_train_set_mean_and_inverse_std(client, coordinator, tmp_path) -> None:
    """Under STANDARDIZE, input_offset is the training set's per-feature mean and input_scale 1/std
    (population std), so (x - offset) * scale has mean 0 and std 1 on the training set."""
    _, model, x_train = _train_and_download(client, coordinator, tmp_path, "STANDARDIZE")
    x = x_train.astype(np.float64)
    np.testing.assert_allclose(model["input_offset"], x.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model["input_scale"], 1 / x.std(axis=0), rtol=1e-5)
    inputs = (x_train - model["input_offset"]) * model["input_scale"]
    np.testing.assert_allclose(inputs.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(inputs.std(axis=0), 1, rtol=1e-4)


def test_scale_exports_offset_zero_and_scale_one_over_255(client, coordinator, tmp_path) -> None:
    """Under SCALE, input_offset is 0 and input_scale 1/255 for every feature."""
    _, model, _ = _train_and_download(client, coordinator, tmp_path, "SCALE")
    assert np.array_equal(model["input_offset"], np.zeros(FEATURES, np.float32))
    assert np.array_equal(model["input_scale"], np.full(FEATURES, 1 / 255, np.float32))


def test_a_finished_job_has_ordered_server_timestamps(client, coordinator, tmp_path) -> None:
    """A succeeded job carries created_at <= started_at <= finished_at, all set by the server."""
    job, _, _ = _train_and_download(client, coordinator, tmp_path, "SCALE")
    assert all(job.HasField(name) for name in ("created_at", "started_at", "finished_at"))
    created, started, finished = (
        getattr(job, name).ToNanoseconds() for name in ("created_at", "started_at", "finished_at")
    )
    assert 0 < created <= started < finished
