"""Job specs: loading YAML/JSON, defaults, validation and serialization."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gradfleet.v1 import coordinator_pb2 as pb
from service.datasets.core import TargetRange
from service.errors import InvalidSpec
from service.jobsetup import build_optimizer
from service.spec import load_spec_file, spec_from_dict, spec_to_dict, spec_to_json
from service.spec_defaults import with_defaults
from service.spec_validation import count_params, validate_against_dataset, validate_spec

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

BASE = {
    "name": "t",
    "dataset": {"uri": "fashion-mnist"},
    "layers": [{"units": 16}, {"units": 8}, {"units": 10}],
}


def _spec(**changes: object) -> pb.JobSpec:
    """BASE with dotted-path changes ("optimizer.kind", "layers.1.units") applied."""
    data = copy.deepcopy(BASE)
    for path, value in changes.items():
        *parents, leaf = path.split(".")
        node = data
        for key in parents:
            node = node[int(key)] if key.isdigit() else node.setdefault(key, {})
        if leaf.isdigit():
            node[int(leaf)] = value
        else:
            node[leaf] = value
    return spec_from_dict(data)


# Options only some kinds use, and the change that picks such a kind, so a range check is reached.
_USED_WITH = {
    "optimizer.momentum": {"optimizer.kind": "MOMENTUM"},
    "optimizer.rho": {"optimizer.kind": "RMSPROP"},
    "optimizer.schedule.gamma": {"optimizer.schedule.kind": "STEP"},
    "optimizer.schedule.step_epochs": {"optimizer.schedule.kind": "STEP"},
    "optimizer.schedule.min_learning_rate": {"optimizer.schedule.kind": "COSINE"},
    "optimizer.schedule.pct_start": {"optimizer.schedule.kind": "ONE_CYCLE"},
    "optimizer.schedule.div_factor": {"optimizer.schedule.kind": "ONE_CYCLE"},
    "optimizer.schedule.final_div_factor": {"optimizer.schedule.kind": "ONE_CYCLE"},
    "huber_delta": {"loss": "HUBER"},
    "rollback_lr_factor": {"on_divergence": "ROLLBACK"},
    "max_rollbacks": {"on_divergence": "ROLLBACK"},
    "layers.0.slope": {"layers.0.activation": "LEAKY_RELU"},
}


def _using(changes: dict) -> dict:
    """`changes` plus a kind that uses each option they set (where one is not chosen already)."""
    kinds = {k: v for path in changes for k, v in _USED_WITH.get(path, {}).items()}
    return kinds | changes


def _invalid(spec: pb.JobSpec, **limits: int) -> InvalidSpec:
    with pytest.raises(InvalidSpec) as info:
        validate_spec(with_defaults(spec), **limits)
    return info.value


# (id, changes to BASE, expected field path, fragment of the message)
INVALID = [
    (
        "workers-zero",
        {"num_workers": 0},
        "num_workers",
        "got 0; must be between 1 and 64 (--max-workers-per-job)",
    ),
    (
        "workers-too-many",
        {"num_workers": 65},
        "num_workers",
        "got 65; must be between 1 and 64 (--max-workers-per-job)",
    ),
    ("shards-zero", {"micro_shards": 0}, "micro_shards", "got 0; must be between 1 and batch_size (256)"),
    (
        "shards-above-batch",
        {"micro_shards": 1000, "batch_size": 128},
        "micro_shards",
        "got 1000; must be between 1 and batch_size (128)",
    ),
    (
        "shards-too-many",
        {"micro_shards": 1025, "batch_size": 4096},
        "micro_shards",
        "got 1025; must be between 1 and 1024",
    ),
    ("batch-zero", {"batch_size": 0}, "batch_size", "got 0; must be between 1 and 1000000"),
    ("batch-huge", {"batch_size": 1_000_001}, "batch_size", "got 1000001"),
    ("epochs-zero", {"epochs": 0}, "epochs", "got 0; must be between 1 and 10000"),
    ("epochs-huge", {"epochs": 10_001}, "epochs", "got 10001"),
    ("layers-empty", {"layers": []}, "layers", "empty; give at least one layer"),
    ("layers-too-many", {"layers": [{"units": 2}] * 65}, "layers", "got 65 layers; must be at most 64"),
    (
        "units-zero",
        {"layers.1.units": 0},
        "layers[1].units",
        "got 0; must be between 1 and 1000000",
    ),
    ("units-huge", {"layers.0.units": 1_000_001}, "layers[0].units", "got 1000001"),
    (
        "activation-number",
        {"layers.2.activation": 9},
        "layers[2].activation",
        "got 9; must be one of RELU, SIGMOID, TANH, IDENTITY",
    ),
    ("loss-number", {"loss": 7}, "loss", "got 7; must be one of SOFTMAX_CROSS_ENTROPY"),
    ("uri-empty", {"dataset.uri": ""}, "dataset.uri", 'empty; use "fashion-mnist", "idx:DIR"'),
    ("uri-unknown", {"dataset.uri": "mnist"}, "dataset.uri", "got 'mnist'; use"),
    ("uri-no-path", {"dataset.uri": "npz:"}, "dataset.uri", "got 'npz:'"),
    (
        "uri-too-long",
        {"dataset.uri": "csv:" + "a" * 4093},
        "dataset.uri",
        "got 4,097 characters; must be at most 4,096",
    ),
    ("preprocessing-number", {"dataset.preprocessing": 9}, "dataset.preprocessing", "got 9"),
    ("kind-number", {"optimizer.kind": 9}, "optimizer.kind", "got 9; must be one of SGD, MOMENTUM"),
    (
        "lr-negative",
        {"optimizer.learning_rate": -1},
        "optimizer.learning_rate",
        "got -1; must be in (0, 1e+30]",
    ),
    ("lr-nan", {"optimizer.learning_rate": "NaN"}, "optimizer.learning_rate", "got nan"),
    ("lr-inf", {"optimizer.learning_rate": "Infinity"}, "optimizer.learning_rate", "got inf"),
    (
        "lr-huge",
        {"optimizer.learning_rate": 1e308},
        "optimizer.learning_rate",
        "got 1e+308; must be in (0, 1e+30]",
    ),
    ("momentum-one", {"optimizer.momentum": 1}, "optimizer.momentum", "got 1; must be in [0, 1)"),
    ("momentum-negative", {"optimizer.momentum": -0.1}, "optimizer.momentum", "got -0.1"),
    ("beta1-one", {"optimizer.beta1": 1.0}, "optimizer.beta1", "got 1; must be in [0, 1)"),
    ("beta2-big", {"optimizer.beta2": 1.5}, "optimizer.beta2", "got 1.5; must be in [0, 1)"),
    ("beta2-nan", {"optimizer.beta2": "NaN"}, "optimizer.beta2", "got nan"),
    ("epsilon-zero", {"optimizer.epsilon": 0}, "optimizer.epsilon", "got 0; must be in (0, 1]"),
    ("epsilon-inf", {"optimizer.epsilon": "Infinity"}, "optimizer.epsilon", "got inf"),
    ("schedule-number", {"optimizer.schedule.kind": 9}, "optimizer.schedule.kind", "got 9"),
    ("gamma-zero", {"optimizer.schedule.gamma": 0}, "optimizer.schedule.gamma", "in (0, 1]"),
    ("gamma-big", {"optimizer.schedule.gamma": 1.5}, "optimizer.schedule.gamma", "got 1.5"),
    (
        "step-epochs-zero",
        {"optimizer.schedule.step_epochs": 0},
        "optimizer.schedule.step_epochs",
        "got 0; must be between 1 and",
    ),
    (
        "min-lr-negative",
        {"optimizer.schedule.min_learning_rate": -1e-5},
        "optimizer.schedule.min_learning_rate",
        "got -1e-05; must be between 0 and the learning rate (0.001)",
    ),
    (
        "min-lr-above-lr",
        {"optimizer.schedule.min_learning_rate": 0.5},
        "optimizer.schedule.min_learning_rate",
        "got 0.5",
    ),
    ("name-long", {"name": "x" * 129}, "name", "got 129 characters; must be at most 128"),
    (
        "name-terminal-escape",
        {"name": "a\x1b[31mRED\nline2"},
        "name",
        "character 2 is U+001B, which is not printable; use letters, digits, punctuation and spaces",
    ),
    ("name-nul", {"name": "\u0000nul"}, "name", "character 1 is U+0000, which is not printable"),
    ("name-bidi-override", {"name": "job\u202egpj.exe"}, "name", "character 4 is U+202E"),
    ("name-blank", {"name": "   "}, "name", "got only white space (3 characters); give a name, or leave it"),
    ("request-id-escape", {"request_id": "r\x1b[2J"}, "request_id", "character 2 is U+001B, which is not"),
    ("request-id-nul", {"request_id": "\u0000"}, "request_id", "character 1 is U+0000"),
    ("request-id-bidi-override", {"request_id": "ab\u202e"}, "request_id", "character 3 is U+202E"),
    (
        "restarts-huge",
        {"max_worker_restarts": 4_000_000_000},
        "max_worker_restarts",
        "got 4000000000; must be between 0 and 100",
    ),
    ("rollbacks-huge", {"max_rollbacks": 101}, "max_rollbacks", "got 101; must be between 0 and 100"),
    ("divergence-number", {"on_divergence": 9}, "on_divergence", "got 9; must be one of FAIL, ROLLBACK"),
    (
        "params-certainly-too-many",
        {"layers": [{"units": 1_000_000}, {"units": 1_000_000}]},
        "layers",
        "at least 1,000,003,000,000 parameters; the limit is 50,000,000 (--max-params)",
    ),
]


@pytest.mark.parametrize(
    ("changes", "field", "fragment"), [r[1:] for r in INVALID], ids=[r[0] for r in INVALID]
)
def test_validate_rejects_invalid_value(changes: dict, field: str, fragment: str) -> None:
    """It rejects each invalid value, naming the field path, the value and what is allowed."""
    err = _invalid(_spec(**_using(changes)))
    assert err.field == field
    assert fragment in err.message
    assert err.message.startswith(f"{field}: ")


def test_validate_accepts_base_and_examples() -> None:
    """A minimal spec and both example files pass validation once defaults are filled; so does a
    name in any script (spaces, punctuation, accents, CJK and symbols are printable)."""
    validate_spec(with_defaults(_spec()))
    validate_spec(with_defaults(_spec(name="résumé v2 (模型) ✓")))
    for name in ("fashion_mnist.yaml", "quick.yaml"):
        validate_spec(with_defaults(load_spec_file(EXAMPLES / name)))


def test_validate_uses_the_given_limits() -> None:
    """It checks against the server's limits, not only the defaults."""
    err = _invalid(_spec(num_workers=5), max_workers=4)
    assert err.message == "num_workers: got 5; must be between 1 and 4 (--max-workers-per-job)"
    assert _invalid(_spec(epochs=11), max_epochs=10).field == "epochs"
    assert _invalid(_spec(batch_size=65), max_batch=64).field == "batch_size"


def test_explicit_zero_is_kept_and_rejected() -> None:
    """An explicit 0 in an optional field is not replaced by the default, so validation sees it."""
    spec = with_defaults(_spec(batch_size=0, **{"optimizer.momentum": 0}))
    assert spec.HasField("batch_size") and spec.batch_size == 0
    assert spec.optimizer.HasField("momentum") and spec.optimizer.momentum == 0.0
    assert _invalid(_spec(batch_size=0)).field == "batch_size"


def test_default_micro_shards_follow_the_batch_size() -> None:
    """The default cuts a batch into shards of about 64 samples, between 1 and 16 of them."""
    got = [with_defaults(pb.JobSpec(batch_size=b)).micro_shards for b in (1, 64, 200, 512, 4096)]
    assert got == [1, 1, 3, 8, 16]


def test_defaults_fill_every_unset_field() -> None:
    """with_defaults fills each documented default and leaves eval_every_steps at 0."""
    spec = with_defaults(pb.JobSpec(layers=[pb.LayerSpec(units=32), pb.LayerSpec(units=10)]))
    opt = spec.optimizer
    got = (spec.name, spec.num_workers, spec.micro_shards, spec.batch_size, spec.epochs)
    assert got == ("job", 2, 4, 256, 10)
    assert spec.eval_every_steps == 0
    assert spec.dataset.preprocessing == pb.SCALE
    assert spec.loss == pb.SOFTMAX_CROSS_ENTROPY
    assert (opt.kind, opt.learning_rate) == (pb.ADAM, 0.001)
    assert (opt.momentum, opt.beta1, opt.beta2, opt.epsilon) == (0.9, 0.9, 0.999, 1e-8)
    assert opt.schedule.kind == pb.CONSTANT
    assert (opt.schedule.gamma, opt.schedule.step_epochs) == (0.1, 1)
    assert opt.schedule.HasField("min_learning_rate") and opt.schedule.min_learning_rate == 0.0
    assert [layer.activation for layer in spec.layers] == [pb.RELU, pb.IDENTITY]


def test_defaults_learning_rate_depends_on_optimizer() -> None:
    """The default learning rate is 0.001 for Adam and 0.01 for SGD and momentum."""
    rates = {
        kind: with_defaults(pb.JobSpec(optimizer=pb.OptimizerSpec(kind=kind))).optimizer.learning_rate
        for kind in (pb.ADAM, pb.SGD, pb.MOMENTUM, pb.OPTIMIZER_UNSPECIFIED)
    }
    assert rates == {
        pb.ADAM: 0.001,
        pb.SGD: 0.01,
        pb.MOMENTUM: 0.01,
        pb.OPTIMIZER_UNSPECIFIED: 0.001,
    }


def test_defaults_keep_given_values_and_leave_the_input_alone() -> None:
    """Given values survive, and the spec passed in is not modified."""
    original = _spec(**{"layers.0.activation": "TANH", "optimizer.learning_rate": 0.05})
    before = original.SerializeToString()
    spec = with_defaults(original)
    assert spec.layers[0].activation == pb.TANH
    assert spec.optimizer.learning_rate == 0.05
    assert original.SerializeToString() == before


def test_load_fashion_mnist_example() -> None:
    """The Fashion-MNIST example loads with the documented model and training settings."""
    spec = load_spec_file(EXAMPLES / "fashion_mnist.yaml")
    assert spec.name == "fashion-mnist-mlp"
    assert (spec.dataset.uri, spec.dataset.preprocessing) == ("fashion-mnist", pb.SCALE)
    assert [(la.units, la.activation) for la in spec.layers] == [
        (256, pb.RELU),
        (128, pb.RELU),
        (10, pb.IDENTITY),
    ]
    assert (spec.loss, spec.optimizer.kind, spec.optimizer.learning_rate) == (
        pb.SOFTMAX_CROSS_ENTROPY,
        pb.ADAM,
        0.001,
    )
    assert (spec.optimizer.schedule.kind, spec.optimizer.schedule.min_learning_rate) == (
        pb.COSINE,
        1e-5,
    )
    got = (spec.batch_size, spec.epochs, spec.num_workers, spec.seed, spec.micro_shards)
    assert got == (256, 12, 2, 1, 4)


def test_load_quick_example() -> None:
    """The quick example is the same model on 10,000/2,000 samples for 3 epochs."""
    spec = load_spec_file(EXAMPLES / "quick.yaml")
    full = load_spec_file(EXAMPLES / "fashion_mnist.yaml")
    assert (spec.dataset.max_train_samples, spec.dataset.max_test_samples) == (10000, 2000)
    assert spec.epochs == 3
    assert list(spec.layers) == list(full.layers)


def test_json_file_round_trips(tmp_path: Path) -> None:
    """A spec written with spec_to_json loads back from a .json file unchanged."""
    spec = with_defaults(load_spec_file(EXAMPLES / "fashion_mnist.yaml"))
    path = tmp_path / "job.json"
    path.write_text(spec_to_json(spec))
    assert load_spec_file(path) == spec
    assert spec_from_dict(spec_to_dict(spec)) == spec


def test_camel_and_snake_case_are_both_accepted() -> None:
    """Field names may be written as in the proto or in camelCase."""
    snake = spec_from_dict({"batch_size": 7, "optimizer": {"learning_rate": 0.5}})
    camel = spec_from_dict({"batchSize": 7, "optimizer": {"learningRate": 0.5}})
    assert snake == camel and snake.batch_size == 7 and snake.optimizer.learning_rate == 0.5


# (id, file text, expected field path, fragment of the message)
BAD_YAML = [
    (
        "unknown-field",
        "optimizer:\n  learning_rte: 0.1\n",
        "optimizer.learning_rte",
        'unknown field; did you mean "learning_rate"?',
    ),
    (
        "enum-typo",
        "optimizer:\n  kind: adamw\n",
        "optimizer.kind",
        '"adamw" is not one of SGD, MOMENTUM, ADAM',
    ),
    ("enum-lower-case", "loss: softmax_cross_entropy\n", "loss", "names are upper case"),
    (
        "units-not-a-number",
        "layers:\n  - units: many\n",
        "layers[0].units",
        'got "many"; must be a whole number',
    ),
    ("units-negative", "layers:\n  - units: -3\n", "layers[0].units", "got -3; must not be negative"),
    (
        "batch-beyond-the-field",
        "batchSize: 99999999999999\n",
        "batch_size",
        "got 99999999999999; is far too large (the field holds at most 4294967295)",
    ),
    ("units-fraction", "layers:\n  - units: 2.5\n", "layers[0].units", "got 2.5"),
    ("bool-for-number", "epochs: true\n", "epochs", "got true; must be a whole number"),
    ("layers-not-list", "layers:\n  units: 3\n", "layers", "must be a list"),
    ("dataset-not-mapping", "dataset: fashion-mnist\n", "dataset", "must be a mapping with fields"),
    ("uri-not-string", "dataset:\n  uri: 5\n", "dataset.uri", "got 5; must be a string"),
    ("field-twice", "batchSize: 1\nbatch_size: 2\n", "batch_size", "given twice"),
    ("syntax", "name: a\nlayers: [\n", "", ":3: invalid YAML"),
    ("duplicate-key", "name: a\nepochs: 1\nepochs: 2\n", "", ":3: invalid YAML: duplicate key"),
    ("empty", "", "", "the file is empty"),
    ("not-mapping", "- 1\n- 2\n", "", "must hold a mapping of JobSpec fields, not a list"),
]


@pytest.mark.parametrize(
    ("text", "field", "fragment"), [r[1:] for r in BAD_YAML], ids=[r[0] for r in BAD_YAML]
)
def test_load_rejects_bad_yaml(tmp_path: Path, text: str, field: str, fragment: str) -> None:
    """A malformed job file is rejected with the field path (or line) and what is wrong."""
    path = tmp_path / "job.yaml"
    path.write_text(text)
    with pytest.raises(InvalidSpec) as info:
        load_spec_file(path)
    assert info.value.field == field
    assert fragment in info.value.message


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("deep.yaml", "name: x\nlayers: " + "[" * 900 + "]" * 900 + "\n"),
        ("deep.json", '{"name": "x", "layers": ' + "[" * 100_000 + "]" * 100_000 + "}"),
        ("shallow-but-too-deep.json", '{"name": "x", "layers": ' + "[" * 40 + "]" * 40 + "}"),
        ("deep-mapping.yaml", "name: x\ndataset: " + "{a: " * 200 + "1" + "}" * 200 + "\n"),
    ],
)
def test_a_deeply_nested_job_file_is_refused_in_one_line(tmp_path: Path, name: str, text: str) -> None:
    """Nesting that would exhaust the parsers' or the checks' recursion is an InvalidSpec naming the
    file, not a RecursionError."""
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InvalidSpec) as info:
        load_spec_file(path)
    assert info.value.message == (
        f"{path}: nested too deeply (more than 32 levels of lists and mappings); a job spec needs at most 4"
    )


def test_a_deeply_nested_override_is_refused_naming_the_flag(tmp_path: Path) -> None:
    """A --set value nested past the limit, whether its YAML parses or not, names the flag."""
    path = tmp_path / "job.json"
    path.write_text(json.dumps(BASE))
    for depth in (40, 5000):
        with pytest.raises(InvalidSpec, match=r"^--set layers: nested too deeply \(more than 32 levels"):
            load_spec_file(path, overrides=["layers=" + "[" * depth + "]" * depth])
    milestones = load_spec_file(path, overrides=["optimizer.schedule.milestones=[2, 4]"])
    assert list(milestones.optimizer.schedule.milestones) == [2, 4]  # the deepest real field still loads


def test_load_rejects_bad_json_with_line(tmp_path: Path) -> None:
    """A JSON syntax error names the file and line."""
    path = tmp_path / "job.json"
    path.write_text('{\n  "name": "a",\n  "epochs": \n}\n')
    with pytest.raises(InvalidSpec, match=r"job\.json:4: invalid JSON"):
        load_spec_file(path)


def test_load_rejects_missing_file_and_unknown_extension(tmp_path: Path) -> None:
    """A missing file and a file that is neither YAML nor JSON are reported by name."""
    with pytest.raises(InvalidSpec, match=r"nope\.yaml: no such file"):
        load_spec_file(tmp_path / "nope.yaml")
    (tmp_path / "job.txt").write_text("name: a\n")
    with pytest.raises(InvalidSpec, match="unknown file type"):
        load_spec_file(tmp_path / "job.txt")


def test_overrides_edit_the_file_before_parsing(tmp_path: Path) -> None:
    """--set values replace fields, whichever case the file spells them in, and reach lists."""
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps({**BASE, "optimizer": {"learningRate": 0.1}}))
    path = path.rename(tmp_path / "job.json")
    spec = load_spec_file(
        path, overrides=["epochs=3", "optimizer.learning_rate=0.5", "layers.2.units=4", "name=x y"]
    )
    assert (spec.epochs, spec.optimizer.learning_rate, spec.layers[2].units) == (3, 0.5, 4)
    assert spec.name == "x y"
    with pytest.raises(InvalidSpec, match="expected key=value"):
        load_spec_file(path, overrides=["epochs"])


def test_count_params_sums_weights_and_biases() -> None:
    """count_params is sum((fan_in + 1) * units): 235,146 for 784-256-128-10."""
    spec = load_spec_file(EXAMPLES / "fashion_mnist.yaml")
    assert count_params(784, spec) == (784 + 1) * 256 + (256 + 1) * 128 + (128 + 1) * 10 == 235_146


# (id, changes to BASE, num_classes, num_train, max_params, field, fragment); BASE on 784 inputs
# has (784 + 1) * 16 + (16 + 1) * 8 + (8 + 1) * 10 = 12,786 parameters.
DATASET_MISMATCH = [
    (
        "output-units",
        {"layers.2.units": 5},
        10,
        1000,
        10**6,
        "layers[2].units",
        "got 5; the dataset has 10 classes, so the last layer needs 10 units",
    ),
    (
        "too-many-params",
        {},
        10,
        1000,
        1000,
        "layers",
        "the model has 12,786 parameters (784 inputs); the limit is 1,000",
    ),
    ("batch-too-big", {"batch_size": 2000}, 10, 1000, 10**6, "batch_size", "only 1000 samples"),
    (
        "mse-output-units",
        {"loss": "MEAN_SQUARED_ERROR", "layers.2.units": 1},
        10,
        1000,
        10**6,
        "layers[2].units",
        "got 1; the dataset has 10 classes, so the last layer needs 10 units",
    ),
    ("regression-needs-mse", {}, 0, 1000, 10**6, "loss", "float targets, which need MEAN_SQUARED_ERROR"),
    (
        "single-class-softmax",
        {"layers.2.units": 1},
        1,
        1000,
        10**6,
        "loss",
        "got SOFTMAX_CROSS_ENTROPY; every label in the dataset is 0, a single class: softmax over one "
        "class gives loss 0 whatever the inputs, so nothing would be learned; a classifier needs labels "
        "of at least 2 classes",
    ),
    (
        "warmup-past-the-end",
        {"batch_size": 250, "optimizer.schedule.warmup_steps": 41},
        10,
        1000,
        10**6,
        "optimizer.schedule.warmup_steps",
        "got 41; must be between 0 and 40, the job's optimizer steps (4 per epoch x 10 epochs)",
    ),
    (
        "warmup-past-the-end-partial-batch",
        {"batch_size": 300, "epochs": 2, "optimizer.schedule.warmup_steps": 9},
        10,
        1000,
        10**6,
        "optimizer.schedule.warmup_steps",
        "got 9; must be between 0 and 8, the job's optimizer steps (4 per epoch x 2 epochs)",
    ),
]


@pytest.mark.parametrize(
    ("changes", "classes", "train", "max_params", "field", "fragment"),
    [r[1:] for r in DATASET_MISMATCH],
    ids=[r[0] for r in DATASET_MISMATCH],
)
def test_validate_against_dataset_rejects_mismatch(
    changes: dict, classes: int, train: int, max_params: int, field: str, fragment: str
) -> None:
    """It rejects a spec that does not fit the loaded dataset, naming the field."""
    spec = with_defaults(_spec(**changes))
    with pytest.raises(InvalidSpec) as info:
        validate_against_dataset(spec, 784, classes, train, max_params)
    assert info.value.field == field
    assert fragment in info.value.message


@pytest.mark.parametrize(
    ("loss", "classes", "target_width", "said"),
    [
        ("MEAN_SQUARED_ERROR", 1, None, "the dataset has 1 class, so the last layer needs 1 unit"),
        ("MEAN_SQUARED_ERROR", 0, 1, "the dataset has 1 target column, so the last layer needs 1 unit"),
        ("MEAN_SQUARED_ERROR", 0, 2, "the dataset has 2 target columns, so the last layer needs 2 units"),
    ],
)
def test_the_output_layer_message_counts_in_words(loss: str, classes: int, target_width, said: str) -> None:
    """One unit, class or target column reads in the singular: never "needs 1 units"."""
    spec = with_defaults(_spec(loss=loss, **{"layers.2.units": 3}))
    with pytest.raises(InvalidSpec) as info:
        validate_against_dataset(spec, 784, classes, 1000, 10**6, target_width=target_width)
    assert re.search(rf"got 3; {re.escape(said)}($| \()", info.value.message), info.value.message


@pytest.mark.parametrize(
    ("low", "high", "named"), [(0.0, 1e10, "1e+10 at line 9"), (-3e9, 2.0, "-3e+09 at line 2")]
)
def test_a_whole_number_label_beyond_any_class_index_is_called_out_of_range(low, high, named) -> None:
    """Whole-number labels read as float targets only because one is beyond a class index (2**31): the
    refusal names that label and the output layer's range, not "float targets"."""
    ends = TargetRange(low, high, f"d.csv at {'line 2' if low else 'line 1'}", "d.csv at line 9", whole=True)
    spec = with_defaults(_spec())
    with pytest.raises(InvalidSpec) as info:
        validate_against_dataset(spec, 784, 0, 1000, 10**6, target_width=1, target_range=ends)
    assert info.value.field == "layers[2].units"
    where, value = named.split(" at ")
    assert info.value.message == (
        f"layers[2].units: got 10; the labels are whole numbers, but d.csv at {value} has {where}, out of "
        "range for the output layer: with 10 units the labels must run 0..9; fix that label, or for "
        "numeric targets choose MEAN_SQUARED_ERROR, MEAN_ABSOLUTE_ERROR or HUBER"
    )
    fractional = TargetRange(low, high, "d.csv at line 2", "d.csv at line 9", whole=False)
    with pytest.raises(InvalidSpec, match="the dataset has float targets"):
        validate_against_dataset(spec, 784, 0, 1000, 10**6, target_width=1, target_range=fractional)


def test_validate_against_dataset_accepts_a_fit() -> None:
    """A spec that matches the dataset passes; MSE fits class labels (one-hot) or float targets."""
    validate_against_dataset(with_defaults(_spec()), 784, 10, 1000, 10**6)
    mse = with_defaults(_spec(loss="MEAN_SQUARED_ERROR"))
    validate_against_dataset(mse, 784, 10, 1000, 10**6)
    regression = with_defaults(_spec(loss="MEAN_SQUARED_ERROR", **{"layers.2.units": 3}))
    validate_against_dataset(regression, 784, 0, 1000, 10**6, target_width=3)
    whole_job_warmup = with_defaults(_spec(batch_size=250, **{"optimizer.schedule.warmup_steps": 40}))
    validate_against_dataset(whole_job_warmup, 784, 10, 1000, 10**6)


def test_validate_against_dataset_skips_what_is_not_known_yet() -> None:
    """With classes and sample count unknown (a large CSV file before its load), only the
    parameter count is checked; the rest waits for the load."""
    unfitting = with_defaults(_spec(batch_size=5000, **{"layers.2.units": 5}))
    validate_against_dataset(unfitting, 784, None, None, 10**6)
    with pytest.raises(InvalidSpec, match="the model has 12,741 parameters"):
        validate_against_dataset(unfitting, 784, None, None, 1000)


@settings(max_examples=50, derandomize=True, deadline=None)
@given(
    workers=st.integers(1, 64),
    batch=st.integers(1, 4096),
    epochs=st.integers(1, 100),
    lr=st.floats(1e-6, 1.0),
    units=st.lists(st.integers(1, 512), min_size=1, max_size=4),
)
def test_valid_specs_round_trip_and_defaults_are_idempotent(
    workers: int, batch: int, epochs: int, lr: float, units: list[int]
) -> None:
    """Any in-range spec validates, survives a dict round trip, and is a fixed point of defaults."""
    spec = with_defaults(
        pb.JobSpec(
            dataset=pb.DatasetSpec(uri="npz:data.npz"),
            layers=[pb.LayerSpec(units=u) for u in units],
            num_workers=workers,
            batch_size=batch,
            epochs=epochs,
            optimizer=pb.OptimizerSpec(learning_rate=lr),
        )
    )
    validate_spec(spec)
    assert with_defaults(spec) == spec
    assert spec_from_dict(spec_to_dict(spec)) == spec


NEW_OPTION_INVALID = [
    (
        "slope-one",
        {"layers.0.activation": "LEAKY_RELU", "layers.0.slope": 1.0},
        "layers[0].slope",
        "got 1; must be in [0, 1)",
    ),
    ("dropout-one", {"layers.1.dropout": 1.0}, "layers[1].dropout", "got 1; must be in [0, 1)"),
    ("dropout-negative", {"layers.0.dropout": -0.1}, "layers[0].dropout", "got -0.1; must be in [0, 1)"),
    ("dropout-last", {"layers.2.dropout": 0.5}, "layers[2].dropout", "must be 0 on the last layer"),
    ("init-number", {"layers.0.init": 9}, "layers[0].init", "got 9; must be one of HE_NORMAL"),
    ("smoothing-one", {"label_smoothing": 1.0}, "label_smoothing", "got 1; must be in [0, 1)"),
    ("huber-zero", {"huber_delta": 0}, "huber_delta", "got 0; must be in (0, 1e+06]"),
    ("top-k-zero", {"eval_top_k": 0}, "eval_top_k", "got 0; must be between 1 and"),
    (
        "decay-negative",
        {"optimizer.weight_decay": -1e-4},
        "optimizer.weight_decay",
        "got -0.0001; must be in [0, 100]",
    ),
    (
        "clip-inf",
        {"optimizer.clip_norm": "Infinity"},
        "optimizer.clip_norm",
        "got inf; must be in [0, 1e+06]",
    ),
    ("rho-one", {"optimizer.rho": 1}, "optimizer.rho", "got 1; must be in [0, 1)"),
    (
        "milestones-missing",
        {"optimizer.schedule.kind": "MULTI_STEP"},
        "optimizer.schedule.milestones",
        "empty; MULTI_STEP needs epochs",
    ),
    (
        "milestones-decreasing",
        {"optimizer.schedule.kind": "MULTI_STEP", "optimizer.schedule.milestones": [5, 3]},
        "optimizer.schedule.milestones[1]",
        "got 3; milestones must be increasing epochs >= 1",
    ),
    (
        "milestone-at-the-last-epoch",
        {"epochs": 10, "optimizer.schedule.kind": "MULTI_STEP", "optimizer.schedule.milestones": [5, 10]},
        "optimizer.schedule.milestones[1]",
        "got 10; the rate drops after that many epochs, so with epochs 10 a milestone must be between 1 "
        "and 9",
    ),
    (
        "milestone-in-a-one-epoch-job",
        {"epochs": 1, "optimizer.schedule.kind": "MULTI_STEP", "optimizer.schedule.milestones": [1]},
        "optimizer.schedule.milestones[0]",
        "got 1; the rate drops after that many epochs, so with epochs 1 a milestone must be none",
    ),
    (
        "pct-start-one",
        {"optimizer.schedule.pct_start": 1},
        "optimizer.schedule.pct_start",
        "must be in (0, 1)",
    ),
    (
        "div-factor-small",
        {"optimizer.schedule.div_factor": 0.5},
        "optimizer.schedule.div_factor",
        "got 0.5; must be in [1, 1e+06]",
    ),
    (
        "final-div-factor-huge",
        {"optimizer.schedule.final_div_factor": 1e300},
        "optimizer.schedule.final_div_factor",
        "got 1e+300; must be in [1, 1e+09]",
    ),
]


def _float_paths(desc, path: str = "") -> list[str]:
    """The path of every float field under `desc`, repeated messages at index 0."""
    paths = []
    for field in desc.fields:
        name = f"{path}{field.name}" + ("[0]" if field.is_repeated else "")
        if field.message_type is not None:
            paths += _float_paths(field.message_type, name + ".")
        elif field.cpp_type in (field.CPPTYPE_DOUBLE, field.CPPTYPE_FLOAT):
            paths.append(name)
    return paths


@pytest.mark.parametrize("path", _float_paths(pb.JobSpec.DESCRIPTOR))
def test_every_float_field_has_a_finite_range(path: str) -> None:
    """It rejects 1e308 in every float field of the spec, naming that field and its range."""
    keys = path.replace("[0]", ".0").split(".")
    err = _invalid(_spec(**_using({".".join(keys): 1e308})))
    assert err.field == path
    assert "got 1e+308; must be" in err.message


@pytest.mark.parametrize(
    ("changes", "field", "fragment"),
    [r[1:] for r in NEW_OPTION_INVALID],
    ids=[r[0] for r in NEW_OPTION_INVALID],
)
def test_validate_rejects_invalid_engine_options(changes: dict, field: str, fragment: str) -> None:
    """It rejects each out-of-range engine option, naming the field and the allowed range."""
    err = _invalid(_spec(**_using(changes)))
    assert (err.field, err.message.startswith(f"{field}: ")) == (field, True)
    assert fragment in err.message


def test_defaults_fill_the_engine_options() -> None:
    """with_defaults picks He or Glorot per activation, slope 0.01 for leaky_relu, no dropout, no decay,
    no clipping, no warmup, top-5 evaluation and PyTorch's one-cycle shape."""
    spec = with_defaults(
        _spec(
            **{
                "layers.0.activation": "LEAKY_RELU",
                "layers.1.activation": "TANH",
                "layers.2.activation": "GELU",
            }
        )
    )
    assert [layer.init for layer in spec.layers] == [pb.HE_NORMAL, pb.GLOROT_UNIFORM, pb.HE_NORMAL]
    assert spec.layers[0].slope == 0.01 and not spec.layers[1].HasField("slope")
    assert all(layer.HasField("dropout") and layer.dropout == 0 for layer in spec.layers)
    assert (spec.label_smoothing, spec.huber_delta, spec.eval_top_k) == (0.0, 1.0, 5)
    opt, schedule = spec.optimizer, spec.optimizer.schedule
    assert (opt.weight_decay, opt.clip_norm, opt.rho) == (0.0, 0.0, 0.9)
    assert (schedule.warmup_steps, schedule.pct_start, schedule.div_factor, schedule.final_div_factor) == (
        0,
        0.3,
        25.0,
        1e4,
    )
    validate_spec(spec)
    assert with_defaults(spec) == spec


def test_every_engine_option_is_accepted_from_yaml_names() -> None:
    """A spec naming every new activation, initialiser, loss, optimizer and schedule validates."""
    for activation, init in zip(
        ("LEAKY_RELU", "ELU", "GELU", "SOFTPLUS"),
        ("HE_UNIFORM", "GLOROT_NORMAL", "HE_NORMAL", "GLOROT_UNIFORM"),
        strict=True,
    ):
        for loss in ("BINARY_CROSS_ENTROPY", "MEAN_ABSOLUTE_ERROR", "HUBER"):
            for kind in ("NESTEROV", "ADAMW", "RMSPROP", "ADAGRAD"):
                for schedule in ("MULTI_STEP", "EXPONENTIAL", "ONE_CYCLE"):
                    spec = _spec(
                        **{
                            "layers.0.activation": activation,
                            "layers.0.init": init,
                            "layers.0.dropout": 0.5,
                            "loss": loss,
                            "optimizer.kind": kind,
                            "optimizer.schedule.kind": schedule,
                            **({"optimizer.schedule.milestones": [2, 4]} if schedule == "MULTI_STEP" else {}),
                            "optimizer.schedule.warmup_steps": 10,
                        }
                    )
                    validate_spec(with_defaults(spec))


UNUSED_OPTIONS = [
    ("smoothing-with-mse", {"loss": "MEAN_SQUARED_ERROR", "label_smoothing": 0.1}, "label_smoothing",
     "got 0.1, but loss is MEAN_SQUARED_ERROR: only SOFTMAX_CROSS_ENTROPY uses it; remove it or choose "
     "SOFTMAX_CROSS_ENTROPY"),
    ("huber-delta-with-softmax", {"huber_delta": 2.0}, "huber_delta",
     "got 2, but loss is SOFTMAX_CROSS_ENTROPY: only HUBER uses it"),
    ("beta2-with-sgd", {"optimizer.kind": "SGD", "optimizer.beta2": 0.99}, "optimizer.beta2",
     "got 0.99, but optimizer.kind is SGD: only ADAM and ADAMW use it; remove it or choose one of those"),
    ("epsilon-with-momentum", {"optimizer.kind": "MOMENTUM", "optimizer.epsilon": 1e-6}, "optimizer.epsilon",
     "only ADAM, ADAMW, RMSPROP and ADAGRAD use it"),
    ("momentum-with-adam", {"optimizer.momentum": 0.5}, "optimizer.momentum",
     "got 0.5, but optimizer.kind is ADAM: only MOMENTUM and NESTEROV use it"),
    ("rho-with-adagrad", {"optimizer.kind": "ADAGRAD", "optimizer.rho": 0.5}, "optimizer.rho",
     "only RMSPROP uses it"),
    ("slope-with-relu", {"layers.0.slope": 0.2}, "layers[0].slope",
     "got 0.2, but layers[0].activation is RELU: only LEAKY_RELU uses it; remove it or choose LEAKY_RELU"),
    ("milestones-with-cosine", {"epochs": 1, "optimizer.schedule.kind": "COSINE",
                                "optimizer.schedule.milestones": [1]},
     "optimizer.schedule.milestones",
     "got [1], but optimizer.schedule.kind is COSINE: only MULTI_STEP uses it"),
    ("gamma-with-cosine", {"optimizer.schedule.kind": "COSINE", "optimizer.schedule.gamma": 0.5},
     "optimizer.schedule.gamma", "only STEP, MULTI_STEP and EXPONENTIAL use it"),
    ("step-epochs-with-exponential", {"optimizer.schedule.kind": "EXPONENTIAL",
                                      "optimizer.schedule.step_epochs": 3},
     "optimizer.schedule.step_epochs",
     "got 3, but optimizer.schedule.kind is EXPONENTIAL: only STEP uses it"),
    ("min-lr-with-step", {"optimizer.schedule.kind": "STEP", "optimizer.schedule.min_learning_rate": 1e-5},
     "optimizer.schedule.min_learning_rate", "only COSINE uses it"),
    ("pct-start-with-constant", {"optimizer.schedule.pct_start": 0.5}, "optimizer.schedule.pct_start",
     "got 0.5, but optimizer.schedule.kind is CONSTANT: only ONE_CYCLE uses it"),
    ("rollback-factor-with-fail", {"rollback_lr_factor": 0.25}, "rollback_lr_factor",
     "got 0.25, but on_divergence is FAIL: only ROLLBACK uses it; remove it or choose ROLLBACK"),
    ("max-rollbacks-with-fail", {"on_divergence": "FAIL", "max_rollbacks": 7}, "max_rollbacks",
     "got 7, but on_divergence is FAIL: only ROLLBACK uses it"),
    ("top-k-with-mse", {"loss": "MEAN_SQUARED_ERROR", "eval_top_k": 3}, "eval_top_k",
     "got 3, but loss is MEAN_SQUARED_ERROR: only SOFTMAX_CROSS_ENTROPY uses it"),
    ("top-k-with-mae", {"loss": "MEAN_ABSOLUTE_ERROR", "eval_top_k": 1}, "eval_top_k",
     "but loss is MEAN_ABSOLUTE_ERROR: only SOFTMAX_CROSS_ENTROPY uses it"),
    ("top-k-with-huber", {"loss": "HUBER", "eval_top_k": 2}, "eval_top_k",
     "but loss is HUBER: only SOFTMAX_CROSS_ENTROPY uses it"),
    ("top-k-with-bce", {"loss": "BINARY_CROSS_ENTROPY", "eval_top_k": 10}, "eval_top_k",
     "got 10, but loss is BINARY_CROSS_ENTROPY: only SOFTMAX_CROSS_ENTROPY uses it"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "field", "fragment"), [r[1:] for r in UNUSED_OPTIONS], ids=[r[0] for r in UNUSED_OPTIONS]
)
def test_an_option_the_chosen_kind_does_not_use_is_refused(changes: dict, field: str, fragment: str) -> None:
    """An option set to other than its default with a kind that ignores it is refused, naming the
    field, the kind chosen and the kinds that use it."""
    err = _invalid(_spec(**changes))
    assert (err.field, err.message.startswith(f"{field}: ")) == (field, True)
    assert fragment in err.message


def test_an_unused_option_at_its_default_is_accepted() -> None:
    """Defaults written out (as a filled spec, such as GetJob returns, has them) are not refused,
    whatever the kinds."""
    spec = _spec(
        **{
            "optimizer.kind": "SGD",
            "optimizer.beta2": 0.999,
            "optimizer.momentum": 0.9,
            "label_smoothing": 0.0,
            "huber_delta": 1.0,
            "layers.0.slope": 0.01,
            "optimizer.schedule.gamma": 0.1,
            "optimizer.schedule.min_learning_rate": 0.0,
            "rollback_lr_factor": 0.5,
            "max_rollbacks": 3,
            "on_divergence": "FAIL",
            "loss": "MEAN_SQUARED_ERROR",
            "eval_top_k": 5,
        }
    )
    validate_spec(with_defaults(spec))
    for loss in ("MEAN_SQUARED_ERROR", "MEAN_ABSOLUTE_ERROR", "HUBER", "BINARY_CROSS_ENTROPY"):
        validate_spec(with_defaults(with_defaults(_spec(loss=loss))))
    rollback = with_defaults(_spec(on_divergence="ROLLBACK", rollback_lr_factor=0.2, max_rollbacks=9))
    validate_spec(with_defaults(rollback))
    for kind in ("SGD", "MOMENTUM", "ADAGRAD", "RMSPROP"):
        for schedule in ("CONSTANT", "COSINE", "STEP", "ONE_CYCLE"):
            filled = with_defaults(_spec(**{"optimizer.kind": kind, "optimizer.schedule.kind": schedule}))
            validate_spec(with_defaults(filled))


def test_an_explicit_zero_learning_rate_is_refused_not_defaulted() -> None:
    """learningRate: 0 written in a job file is an error naming the field, not a silent default."""
    spec = with_defaults(
        spec_from_dict(
            {"dataset": {"uri": "fashion-mnist"}, "layers": [{"units": 10}], "optimizer": {"learningRate": 0}}
        )
    )
    assert spec.optimizer.learning_rate == 0
    with pytest.raises(InvalidSpec, match=r"optimizer\.learning_rate: got 0"):
        validate_spec(spec)
    assert with_defaults(spec_from_dict({"optimizer": {"kind": "ADAMW"}})).optimizer.learning_rate == 0.001


def test_readme_job_file_section_names_every_option_and_value() -> None:
    """The README's job-file section names every field of the spec messages and every value of
    their enums, so a new option cannot go undocumented."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("## The job file") : readme.index("## The exported model")]
    messages = (pb.JobSpec, pb.DatasetSpec, pb.LayerSpec, pb.OptimizerSpec, pb.ScheduleSpec)
    fields = {f.name for m in messages for f in m.DESCRIPTOR.fields if f.message_type is None}
    enums = {f.enum_type for m in messages for f in m.DESCRIPTOR.fields if f.enum_type is not None}
    values = {v.name for e in enums for v in e.values if v.number != 0}
    missing = sorted(name for name in fields | values if not re.search(rf"\b{name}\b", section))
    assert missing == []


@pytest.mark.parametrize("kind", ["CONSTANT", "COSINE", "EXPONENTIAL", "ONE_CYCLE", "STEP"])
def test_extreme_valid_values_keep_every_rate_finite(kind: str) -> None:
    """At the edges of every range, each schedule's rates stay finite and within the learning rate."""
    uses = {  # the extremes of the options that `kind` uses
        "STEP": {"optimizer.schedule.gamma": 1.0},
        "EXPONENTIAL": {"optimizer.schedule.gamma": 1.0},
        "COSINE": {"optimizer.schedule.min_learning_rate": 1e3},
        "ONE_CYCLE": {"optimizer.schedule.div_factor": 1.0, "optimizer.schedule.final_div_factor": 1e9},
    }
    extremes = {
        "optimizer.learning_rate": 1e3,
        "optimizer.schedule.kind": kind,
        "optimizer.schedule.warmup_steps": 3,
        **uses.get(kind, {}),
    }
    spec = with_defaults(_spec(batch_size=10, epochs=4, **extremes))
    validate_spec(spec)
    _optimizer, schedule = build_optimizer(spec, 10, 100)
    rates = [schedule(step) for step in range(40)]
    assert all(0 <= rate <= 1e3 for rate in rates), rates
