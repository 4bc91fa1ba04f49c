"""examples/predict.py reproduces the engine's activations with plain numpy."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from examples.predict import ACTIVATIONS, predict
from workers.nn import Network
from workers.nn.activations import apply_activation

ENGINE_NAMES = {
    name.upper(): name
    for name in ("relu", "leaky_relu", "elu", "gelu", "sigmoid", "tanh", "softplus", "identity")
}


@pytest.mark.parametrize("name", sorted(ENGINE_NAMES))
def test_every_activation_matches_the_engine(name: str) -> None:
    """Each activation in predict.py's table gives the engine's values (slope 0.2 for LEAKY_RELU)."""
    z = np.linspace(-30, 30, 121)
    ours = ACTIVATIONS[name](z, {"slope": 0.2})
    np.testing.assert_allclose(
        ours, apply_activation(ENGINE_NAMES[name], z, slope=0.2), rtol=1e-12, atol=1e-12
    )


def test_predict_matches_the_engine_on_a_model_with_new_activations() -> None:
    """A model with leaky_relu (slope 0.3) and gelu layers predicts the engine's argmax classes."""
    net = Network(
        [6, 9, 7, 4], ["leaky_relu", "gelu", "identity"], "softmax_cross_entropy", slopes=[0.3, 0.01, 0.01]
    )
    rng = np.random.default_rng(0)
    flat = net.init_params(rng, np.float64)
    layers = [{"activation": "LEAKY_RELU", "slope": 0.3}, {"activation": "GELU"}, {"activation": "IDENTITY"}]
    model = dict(net.named_parameters(flat))
    model |= {
        "spec_json": json.dumps({"layers": layers}),
        "input_offset": np.zeros(6),
        "input_scale": np.ones(6),
    }
    x = rng.standard_normal((50, 6))
    assert np.array_equal(predict(model, x), net.forward(flat, x).argmax(axis=1))


@pytest.mark.parametrize(
    "argv", [[], ["a.npz", "dir", "extra"], ["--help"]], ids=["none", "too-many", "help"]
)
def test_the_script_without_a_model_prints_usage_and_exits_2(argv: list[str]) -> None:
    """`python examples/predict.py` with no model (or too many arguments) prints its usage line to
    stderr and exits 2, as a command-line tool does, instead of an IndexError traceback."""
    script = Path(__file__).resolve().parent.parent / "examples" / "predict.py"
    done = subprocess.run([sys.executable, str(script), *argv], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr == "usage: python examples/predict.py model.npz [DIR with t10k-*-ubyte.gz]\n"
