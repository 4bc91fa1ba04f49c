"""Evaluate a downloaded gradfleet model on Fashion-MNIST's test set with plain numpy (no gradfleet).

Usage: python examples/predict.py model.npz [DIR with t10k-*-ubyte.gz]
"""

import gzip
import json
import sys

import numpy as np

ACTIVATIONS = {  # each takes the pre-activation and the layer's spec (for LEAKY_RELU's slope)
    "RELU": lambda z, layer: np.maximum(z, 0),
    "LEAKY_RELU": lambda z, layer: np.where(z > 0, z, layer.get("slope", 0.01) * z),
    "ELU": lambda z, layer: np.where(z > 0, z, np.expm1(np.minimum(z, 0))),
    "GELU": lambda z, layer: 0.5 * z * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z**3))),
    "SIGMOID": lambda z, layer: 0.5 * (1 + np.tanh(0.5 * z)),
    "TANH": lambda z, layer: np.tanh(z),
    "SOFTPLUS": lambda z, layer: np.logaddexp(z, 0),
    "IDENTITY": lambda z, layer: z,
}


def predict(model: dict, x_raw: np.ndarray) -> np.ndarray:
    """Class predictions for raw inputs x_raw of shape (n, features)."""
    layers = json.loads(str(model["spec_json"]))["layers"]
    h = (x_raw.astype(np.float32) - model["input_offset"]) * model["input_scale"]
    for i, layer in enumerate(layers):
        h = h @ model[f"layer_{i}_weight"] + model[f"layer_{i}_bias"]
        h = ACTIVATIONS[layer.get("activation", "IDENTITY")](h, layer)
    return h.argmax(axis=1)


def read_idx(path: str) -> np.ndarray:
    with gzip.open(path) as f:
        data = f.read()
    ndim = data[3]
    shape = np.frombuffer(data, ">u4", ndim, 4)
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3) or sys.argv[1] in ("-h", "--help"):
        print("usage: python examples/predict.py model.npz [DIR with t10k-*-ubyte.gz]", file=sys.stderr)
        sys.exit(2)
    folder = sys.argv[2] if len(sys.argv) > 2 else "/usr/share/datasets/fashion-mnist"
    model = dict(np.load(sys.argv[1], allow_pickle=False))
    x = read_idx(f"{folder}/t10k-images-idx3-ubyte.gz").reshape(10000, -1)
    y = read_idx(f"{folder}/t10k-labels-idx1-ubyte.gz")
    accuracy = float((predict(model, x) == y).mean())
    print(f"test accuracy of {sys.argv[1]} computed with plain numpy: {accuracy:.4f}")
