"""The exported model: an .npz any numpy user can load without gradfleet.

Arrays: layer_{i}_weight (fan_in, fan_out) and layer_{i}_bias (fan_out,) float32 for the i-th dense
layer; input_offset and input_scale (features,) such that the network's input is
(x_raw - input_offset) * input_scale; spec_json, the job spec as JSON (a 0-d string array).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from service.durable import write_durably


def model_arrays(
    named_params: dict[str, np.ndarray], offset: np.ndarray, scale: np.ndarray, spec_json: str
) -> dict[str, np.ndarray]:
    arrays = {name: np.ascontiguousarray(value, dtype=np.float32) for name, value in named_params.items()}
    arrays["input_offset"] = offset.astype(np.float32)
    arrays["input_scale"] = scale.astype(np.float32)
    arrays["spec_json"] = np.array(spec_json)
    return arrays


def write_model(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write atomically and durably: a temporary file in the same folder, fsync, rename, fsync
    of the folder (see service/durable.py); StateNotWritable names the disk's problem."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_durably(path, buffer.getvalue(), "the model")


def load_model(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}
