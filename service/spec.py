"""Job specs: load from YAML/JSON, fill defaults, validate, serialize.

A job file is the `JobSpec` message in protobuf's JSON mapping (field names in camelCase or
snake_case, enum values by name), so YAML, JSON and the wire share one schema. Every error is an
`InvalidSpec` naming the field path (`layers[1].units`), the value received and what is allowed.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from gradfleet.v1 import coordinator_pb2 as pb
from service.errors import InvalidSpec
from workers.batches import steps_per_epoch

MAX_NAME_CHARS = 128
MAX_LAYERS = 64  # deeper plain MLPs do not train; 100,000 layers made a 12 MB Job record
MAX_LAYER_UNITS = 1_000_000
MAX_MICRO_SHARDS = 1024
DATASET_URI_HELP = 'use "fashion-mnist", "idx:DIR", "npz:FILE" or "csv:FILE"'
_URI_SCHEMES = ("idx:", "npz:", "csv:")

_UINT32_MAX = 2**32 - 1
_UINT64_MAX = 2**64 - 1
_INT_RANGES = {
    FieldDescriptor.CPPTYPE_UINT32: (0, _UINT32_MAX),
    FieldDescriptor.CPPTYPE_UINT64: (0, _UINT64_MAX),
    FieldDescriptor.CPPTYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.CPPTYPE_INT64: (-(2**63), 2**63 - 1),
}


# ---------------------------------------------------------------------------------------------
# Loading


def load_spec_file(path: str | Path, *, overrides: Sequence[str] = ()) -> pb.JobSpec:
    """Read a .yaml/.yml or .json job file; `overrides` ("a.b=value") are applied before parsing."""
    data = apply_overrides(_read_document(Path(path)), overrides)
    return spec_from_dict(data)


def spec_from_dict(data: Any) -> pb.JobSpec:
    """Convert a mapping in protobuf's JSON mapping to a JobSpec; raises InvalidSpec with a path."""
    if not isinstance(data, dict):
        raise InvalidSpec("", f"a job spec must be a mapping of fields, got {_type_name(data)}")
    _check_message(data, pb.JobSpec.DESCRIPTOR, pb.JobSpec, "")
    try:
        return json_format.ParseDict(data, pb.JobSpec())
    except json_format.ParseError as exc:  # the walk above should have caught it; stay readable
        raise InvalidSpec("", _strip_parse_error(str(exc))) from None


def apply_overrides(data: Any, overrides: Sequence[str]) -> Any:
    """Set "a.b.c=value" keys in a spec mapping; value is parsed as YAML (numbers, names, lists)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise InvalidSpec("", f"--set {item!r}: expected key=value, e.g. epochs=3")
        try:
            value = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError:
            value = raw  # not YAML: take it as a plain string
        data = _set_path(data if isinstance(data, dict) else {}, key.strip().split("."), value)
    return data


def _read_document(path: Path) -> Any:
    if path.suffix.lower() not in (".yaml", ".yml", ".json"):
        raise InvalidSpec("", f"{path}: unknown file type; use a .yaml, .yml or .json job file")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidSpec("", f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidSpec("", f"{path}: cannot read: {exc}") from None
    data = _parse_json(path, text) if path.suffix.lower() == ".json" else _parse_yaml(path, text)
    if data is None:
        raise InvalidSpec("", f"{path}: the file is empty")
    if not isinstance(data, dict):
        raise InvalidSpec("", f"{path}: must hold a mapping of JobSpec fields, not {_type_name(data)}")
    return data


def _parse_json(path: Path, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidSpec("", f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None


def _parse_yaml(path: Path, text: str) -> Any:
    try:
        return yaml.load(text, Loader=_StrictYamlLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else "?"
        raise InvalidSpec("", f"{path}:{line}: invalid YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise InvalidSpec("", f"{path}: invalid YAML: {exc}") from None


class _StrictYamlLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys, which plain YAML silently lets the last one win."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _set_path(data: Any, keys: list[str], value: Any) -> Any:
    if not keys:
        return value
    head, rest = keys[0], keys[1:]
    if isinstance(data, list) and head.isdigit() and int(head) < len(data):
        data[int(head)] = _set_path(data[int(head)], rest, value)
        return data
    if not isinstance(data, dict):
        raise InvalidSpec("", f"--set {'.'.join(keys)}: cannot set a key inside {data!r}")
    # Replace an existing key spelled the other way (learningRate vs learning_rate).
    existing = next((k for k in data if _norm(k) == _norm(head)), head)
    data[existing] = _set_path(data.get(existing, {}), rest, value)
    return data


def _norm(key: Any) -> str:
    return str(key).replace("_", "").lower()


# ---------------------------------------------------------------------------------------------
# Structure check: walks the mapping next to the descriptor so every error knows its exact path.


def _check_message(data: Any, desc: Descriptor, cls: type[Message], path: str) -> None:
    if not isinstance(data, dict):
        fields = ", ".join(f.name for f in desc.fields)
        raise InvalidSpec(path, f"got {_show(data)}; must be a mapping with fields {fields}")
    by_key = {f.name: f for f in desc.fields} | {f.json_name: f for f in desc.fields}
    seen: dict[str, str] = {}
    for key, value in data.items():
        field = by_key.get(key)
        if field is None:
            raise InvalidSpec(_join(path, str(key)), _unknown_field(str(key), desc))
        if field.name in seen:
            raise InvalidSpec(_join(path, field.name), f"given twice, as {seen[field.name]} and {key}")
        seen[field.name] = str(key)
        _check_field(field, key, value, cls, _join(path, field.name))


def _check_field(field: FieldDescriptor, key: str, value: Any, cls: type, path: str) -> None:
    if value is None:
        return  # JSON null means "not set"
    if field.is_repeated:
        if not isinstance(value, list):
            raise InvalidSpec(path, f"got {_show(value)}; must be a list")
        for i, item in enumerate(value):
            _check_single(field, key, item, cls, f"{path}[{i}]", as_list=True)
    else:
        _check_single(field, key, value, cls, path, as_list=False)


def _check_single(
    field: FieldDescriptor, key: str, value: Any, cls: type, path: str, *, as_list: bool
) -> None:
    if field.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
        _check_message(value, field.message_type, GetMessageClass(field.message_type), path)
        return
    if isinstance(value, bool) and field.cpp_type != FieldDescriptor.CPPTYPE_BOOL:
        raise InvalidSpec(path, f"got {_show(value)}; {_expectation(field)}")
    try:
        json_format.ParseDict({key: [value] if as_list else value}, cls())
    except json_format.ParseError:
        if field.enum_type is not None:
            raise InvalidSpec(path, _enum_problem(value, field.enum_type)) from None
        raise InvalidSpec(path, f"got {_show(value)}; {_expectation(field, value)}") from None


def _expectation(field: FieldDescriptor, value: object = None) -> str:
    if field.cpp_type in _INT_RANGES:
        # The storage type's bounds only: the field's own range is checked after parsing, so
        # name a bound only where the value really is beyond it.
        low, high = _INT_RANGES[field.cpp_type]
        if isinstance(value, int) and value < low:
            return "must not be negative" if low == 0 else f"must be at least {low}"
        if isinstance(value, int) and value > high:
            return f"is far too large (the field holds at most {high})"
        return "must be a whole number"
    if field.cpp_type in (FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT):
        return "must be a number"
    if field.cpp_type == FieldDescriptor.CPPTYPE_BOOL:
        return "must be true or false"
    if field.enum_type is not None:
        return f"must be one of {_enum_names(field.enum_type)}"
    return "must be a string (quote it)"


def _enum_problem(value: Any, enum: EnumDescriptor) -> str:
    problem = f"{_show(value)} is not one of {_enum_names(enum)}"
    if isinstance(value, str) and value.upper() in enum.values_by_name:
        problem += f' (names are upper case: "{value.upper()}")'
    return problem


def _unknown_field(key: str, desc: Descriptor) -> str:
    names = [f.name for f in desc.fields]
    close = difflib.get_close_matches(key, names + [f.json_name for f in desc.fields], n=1)
    hint = f'did you mean "{close[0]}"? ' if close else ""
    return f"unknown field; {hint}{desc.name} has {', '.join(names)}"


def _enum_names(enum: EnumDescriptor) -> str:
    return ", ".join(v.name for v in enum.values if v.number != 0)


def _strip_parse_error(text: str) -> str:
    while text.startswith("Failed to parse ") and ": " in text:
        text = text.split(": ", 1)[1]
    return text.rstrip(".")


# ---------------------------------------------------------------------------------------------
# Defaults


MAX_DEFAULT_MICRO_SHARDS = 16


def with_defaults(spec: pb.JobSpec) -> pb.JobSpec:
    """Return a copy with every unset field filled; an explicit 0 in an optional field stays."""
    out = pb.JobSpec()
    out.CopyFrom(spec)
    out.name = out.name or "job"
    _default(out, num_workers=2, batch_size=256, epochs=10)
    # Micro-shards of about 64 samples: smaller ones make the per-shard matmuls inefficient.
    _default(out, micro_shards=max(1, min(MAX_DEFAULT_MICRO_SHARDS, out.batch_size // 64)))
    if out.dataset.preprocessing == pb.PREPROCESSING_UNSPECIFIED:
        out.dataset.preprocessing = pb.SCALE
    if out.loss == pb.LOSS_UNSPECIFIED:
        out.loss = pb.SOFTMAX_CROSS_ENTROPY
    for i, layer in enumerate(out.layers):
        if layer.activation == pb.ACTIVATION_UNSPECIFIED:
            layer.activation = pb.IDENTITY if i == len(out.layers) - 1 else pb.RELU
        _fill_layer(layer)
    _default(out, label_smoothing=0.0, huber_delta=1.0, eval_top_k=5)
    _fill_optimizer(out.optimizer)
    _fill_recovery(out)
    return out


_RELU_LIKE = (pb.RELU, pb.LEAKY_RELU, pb.ELU, pb.GELU, pb.SOFTPLUS)


def _fill_layer(layer: pb.LayerSpec) -> None:
    if layer.init == pb.INITIALIZER_UNSPECIFIED:
        layer.init = pb.HE_NORMAL if layer.activation in _RELU_LIKE else pb.GLOROT_UNIFORM
    if layer.activation == pb.LEAKY_RELU:
        _default(layer, slope=0.01)
    _default(layer, dropout=0.0)


DEFAULT_CHECKPOINT_EVERY_STEPS = 500
MAX_REQUEST_ID_CHARS = 128
MAX_RETRIES = 100  # worker restarts or rollbacks: beyond this a job is not recovering, only looping


def _fill_recovery(spec: pb.JobSpec) -> None:
    _default(spec, checkpoint_every_steps=DEFAULT_CHECKPOINT_EVERY_STEPS, max_worker_restarts=3)
    _default(spec, rollback_lr_factor=0.5, max_rollbacks=3)
    if spec.on_divergence == pb.DIVERGENCE_POLICY_UNSPECIFIED:
        spec.on_divergence = pb.FAIL


def _fill_optimizer(opt: pb.OptimizerSpec) -> None:
    if opt.kind == pb.OPTIMIZER_UNSPECIFIED:
        opt.kind = pb.ADAM
    if not opt.HasField("learning_rate"):  # an explicit 0 stays, for validation to refuse
        opt.learning_rate = 0.001 if opt.kind in (pb.ADAM, pb.ADAMW) else 0.01
    # Filled whatever the kind, so a reader never sees a silent 0.0 for a hyperparameter.
    _default(opt, momentum=0.9, beta1=0.9, beta2=0.999, epsilon=1e-8)
    _default(opt, weight_decay=0.0, clip_norm=0.0, rho=0.9)
    if opt.schedule.kind == pb.SCHEDULE_UNSPECIFIED:
        opt.schedule.kind = pb.CONSTANT
    _default(opt.schedule, gamma=0.1, step_epochs=1, min_learning_rate=0.0)
    _default(opt.schedule, warmup_steps=0, pct_start=0.3, div_factor=25.0, final_div_factor=1e4)


def _default(message: Message, **values: Any) -> None:
    for name, value in values.items():
        if not message.HasField(name):
            setattr(message, name, value)


# ---------------------------------------------------------------------------------------------
# Validation


@dataclass(frozen=True)
class Interval:
    """A range of finite numbers, each end open or closed; prints as "(0, 1000]"."""

    low: float
    high: float
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return math.isfinite(value) and above and below

    def __str__(self) -> str:
        return f"{'(['[not self.low_open]}{_num(self.low)}, {_num(self.high)}{')]'[not self.high_open]}"


# Every float field of the spec has a finite range, so nothing computed from valid values (the
# schedule's rates, a rollback's scaled rate) can overflow. The learning rate's bound is that
# alone: far beyond any useful rate, but divergence drills (and their rollbacks) use huge ones.
FRACTION = Interval(0, 1, high_open=True)
OPEN_UNIT = Interval(0, 1, low_open=True, high_open=True)
LEARNING_RATE = Interval(0, 1e30, low_open=True)
HUBER_DELTA = Interval(0, 1e6, low_open=True)
_OPTIMIZER_RANGES = {
    "learning_rate": LEARNING_RATE,
    "momentum": FRACTION,
    "beta1": FRACTION,
    "beta2": FRACTION,
    "epsilon": Interval(0, 1, low_open=True),
    "rho": FRACTION,
    "weight_decay": Interval(0, 100),
    "clip_norm": Interval(0, 1e6),
}
# min_learning_rate is checked against the learning rate itself.
_SCHEDULE_RANGES = {
    "gamma": Interval(0, 1, low_open=True),
    "pct_start": OPEN_UNIT,
    "div_factor": Interval(1, 1e6),
    "final_div_factor": Interval(1, 1e9),
}


def validate_spec(
    spec: pb.JobSpec,
    *,
    max_workers: int = 64,
    max_params: int = 50_000_000,
    max_epochs: int = 10_000,
    max_batch: int = 1_000_000,
) -> None:
    """Raise InvalidSpec for the first problem in a with_defaults() spec.

    The input size is unknown until the dataset is loaded, so `max_params` is only checked against
    a lower bound here (one input feature); validate_against_dataset checks the exact count.
    """
    _check_name(spec.name)
    _check_dataset(spec.dataset)
    _check_layers(spec.layers)
    if (at_least := count_params(1, spec)) > max_params:
        raise InvalidSpec("layers", f"the model has at least {at_least:,} parameters; {_limit(max_params)}")
    _check_enum("loss", spec.loss, pb.Loss.DESCRIPTOR)
    _check_loss_options(spec)
    _check_range("epochs", spec.epochs, 1, max_epochs)
    _check_optimizer(spec.optimizer, spec.epochs)
    _check_range("batch_size", spec.batch_size, 1, max_batch)
    _check_range("num_workers", spec.num_workers, 1, max_workers)
    _check_micro_shards(spec.micro_shards, spec.batch_size)
    _check_recovery(spec)


def _check_micro_shards(shards: int, batch_size: int) -> None:
    # More shards than samples leaves shards empty and only adds per-shard overhead.
    if not 1 <= shards <= min(MAX_MICRO_SHARDS, batch_size):
        high = f"batch_size ({batch_size})" if batch_size < MAX_MICRO_SHARDS else MAX_MICRO_SHARDS
        raise InvalidSpec("micro_shards", f"got {shards}; must be between 1 and {high}")


def _check_recovery(spec: pb.JobSpec) -> None:
    if spec.HasField("request_id") and not 1 <= len(spec.request_id) <= MAX_REQUEST_ID_CHARS:
        raise InvalidSpec(
            "request_id", f"got {len(spec.request_id)} characters; must be 1-{MAX_REQUEST_ID_CHARS}"
        )
    _check_enum("on_divergence", spec.on_divergence, pb.DivergencePolicy.DESCRIPTOR)
    _check_range("max_worker_restarts", spec.max_worker_restarts, 0, MAX_RETRIES)
    _check_range("max_rollbacks", spec.max_rollbacks, 0, MAX_RETRIES)
    _check_float("rollback_lr_factor", spec.rollback_lr_factor, OPEN_UNIT)


def validate_against_dataset(
    spec: pb.JobSpec,
    num_features: int,
    num_classes: int | None,
    num_train: int | None,
    max_params: int,
    *,
    target_width: int | None = None,
) -> None:
    """Raise InvalidSpec where the spec does not fit the dataset.

    `num_classes` is 0 for float (regression) targets, which have `target_width` columns. None
    for any of them means unknown (a large CSV file not yet parsed): what depends on it is checked
    when the job loads the data.
    """
    if num_classes is not None:
        _check_output_layer(spec, num_classes, target_width)
    params = count_params(num_features, spec)
    if params > max_params:
        raise InvalidSpec(
            "layers",
            f"the model has {params:,} parameters ({num_features} inputs); {_limit(max_params)}",
        )
    if num_train is None:
        return
    if spec.batch_size > num_train:
        raise InvalidSpec(
            "batch_size",
            f"got {spec.batch_size}; the training set has only {num_train} samples",
        )
    _check_warmup(spec, num_train)


def _check_warmup(spec: pb.JobSpec, num_train: int) -> None:
    """Warmup beyond the job's last step would never reach the learning rate the spec asks for."""
    per_epoch = steps_per_epoch(num_train, spec.batch_size)
    total = per_epoch * spec.epochs
    warmup = spec.optimizer.schedule.warmup_steps
    if warmup > total:
        raise InvalidSpec(
            "optimizer.schedule.warmup_steps",
            f"got {warmup}; must be between 0 and {total}, the job's optimizer steps ({per_epoch} per "
            f"epoch x {spec.epochs} epochs)",
        )


def _check_output_layer(spec: pb.JobSpec, num_classes: int, target_width: int | None) -> None:
    last = len(spec.layers) - 1
    units = spec.layers[last].units
    if num_classes == 0 and spec.loss == pb.SOFTMAX_CROSS_ENTROPY:
        raise InvalidSpec(
            "loss",
            "got SOFTMAX_CROSS_ENTROPY; the dataset has float targets, which need MEAN_SQUARED_ERROR, "
            "MEAN_ABSOLUTE_ERROR, HUBER or (0/1 multi-label targets) BINARY_CROSS_ENTROPY",
        )
    # Class labels become one-hot targets for the other losses, so every loss needs one unit per class.
    hint = ""
    if num_classes:
        wanted, what = num_classes, f"{num_classes} class{'es' if num_classes != 1 else ''}"
        # A single wild label (say 10**9) shows up as a huge class count: say where it comes from.
        hint = f" (labels run 0..{num_classes - 1}; if the largest is a mistake, fix the data)"
    else:
        wanted, what = target_width, f"{target_width} target column(s)"
    if wanted is not None and units != wanted:
        raise InvalidSpec(
            f"layers[{last}].units",
            f"got {units}; the dataset has {what}, so the last layer needs {wanted} units{hint}",
        )


def count_params(input_size: int, spec: pb.JobSpec) -> int:
    """Weights plus biases of the dense stack: sum of (fan_in + 1) * units over the layers."""
    total, fan_in = 0, input_size
    for layer in spec.layers:
        total += (fan_in + 1) * layer.units
        fan_in = layer.units
    return total


def _limit(max_params: int) -> str:
    return f"the limit is {max_params:,}; use fewer or smaller layers"


def _check_name(name: str) -> None:
    if len(name) > MAX_NAME_CHARS:
        raise InvalidSpec("name", f"got {len(name)} characters; must be at most {MAX_NAME_CHARS}")
    # Names are printed to other users' terminals (`gradfleet list`): no escapes, newlines or NULs.
    bad = next((i for i, ch in enumerate(name) if not ch.isprintable()), None)
    if bad is not None:
        raise InvalidSpec(
            "name",
            f"character {bad + 1} is U+{ord(name[bad]):04X}, which is not printable; "
            "use letters, digits, punctuation and spaces",
        )


def _check_dataset(dataset: pb.DatasetSpec) -> None:
    uri = dataset.uri
    if not uri.strip():
        raise InvalidSpec("dataset.uri", f"empty; {DATASET_URI_HELP}")
    known = uri == "fashion-mnist" or (uri.startswith(_URI_SCHEMES) and len(uri) > 4)
    if not known:
        raise InvalidSpec("dataset.uri", f"got {uri!r}; {DATASET_URI_HELP}")
    _check_enum("dataset.preprocessing", dataset.preprocessing, pb.Preprocessing.DESCRIPTOR)


def _check_layers(layers: Sequence[pb.LayerSpec]) -> None:
    if not layers:
        raise InvalidSpec("layers", "empty; give at least one layer, the last with one unit per class")
    if len(layers) > MAX_LAYERS:
        raise InvalidSpec("layers", f"got {len(layers)} layers; must be at most {MAX_LAYERS}")
    for i, layer in enumerate(layers):
        _check_range(f"layers[{i}].units", layer.units, 1, MAX_LAYER_UNITS)
        _check_enum(f"layers[{i}].activation", layer.activation, pb.Activation.DESCRIPTOR)
        _check_layer_options(f"layers[{i}]", layer, is_last=i == len(layers) - 1)


def _check_layer_options(path: str, layer: pb.LayerSpec, *, is_last: bool) -> None:
    _check_enum(f"{path}.init", layer.init, pb.Initializer.DESCRIPTOR)
    if layer.HasField("slope"):
        _check_float(f"{path}.slope", layer.slope, FRACTION)
    _check_float(f"{path}.dropout", layer.dropout, FRACTION)
    if is_last and layer.dropout != 0:
        raise InvalidSpec(
            f"{path}.dropout", f"got {_num(layer.dropout)}; must be 0 on the last layer (the output)"
        )


def _check_loss_options(spec: pb.JobSpec) -> None:
    _check_float("label_smoothing", spec.label_smoothing, FRACTION)
    _check_float("huber_delta", spec.huber_delta, HUBER_DELTA)
    _check_range("eval_top_k", spec.eval_top_k, 1, MAX_LAYER_UNITS)


def _check_optimizer(opt: pb.OptimizerSpec, epochs: int) -> None:
    _check_enum("optimizer.kind", opt.kind, pb.OptimizerKind.DESCRIPTOR)
    for name, interval in _OPTIMIZER_RANGES.items():
        _check_float(f"optimizer.{name}", getattr(opt, name), interval)
    schedule = opt.schedule
    _check_schedule_options(schedule, epochs)
    _check_enum("optimizer.schedule.kind", schedule.kind, pb.ScheduleKind.DESCRIPTOR)
    _check_range("optimizer.schedule.step_epochs", schedule.step_epochs, 1, _UINT32_MAX)
    low = schedule.min_learning_rate
    if not (math.isfinite(low) and 0 <= low <= opt.learning_rate):
        raise InvalidSpec(
            "optimizer.schedule.min_learning_rate",
            f"got {_num(low)}; must be between 0 and the learning rate ({_num(opt.learning_rate)})",
        )


def _check_schedule_options(schedule: pb.ScheduleSpec, epochs: int) -> None:
    path = "optimizer.schedule"
    milestones = list(schedule.milestones)
    if schedule.kind == pb.MULTI_STEP and not milestones:
        raise InvalidSpec(f"{path}.milestones", "empty; MULTI_STEP needs epochs such as [30, 60]")
    for i, epoch in enumerate(milestones):
        if epoch < 1 or (i and epoch <= milestones[i - 1]):
            raise InvalidSpec(
                f"{path}.milestones[{i}]", f"got {epoch}; milestones must be increasing epochs >= 1"
            )
        if epoch >= epochs:  # it would lower the rate after the last epoch: never
            allowed = f"between 1 and {epochs - 1}" if epochs > 1 else "none (there is no second epoch)"
            raise InvalidSpec(
                f"{path}.milestones[{i}]",
                f"got {epoch}; the rate drops after that many epochs, so with epochs {epochs} a milestone "
                f"must be {allowed}",
            )
    for name, interval in _SCHEDULE_RANGES.items():
        _check_float(f"{path}.{name}", getattr(schedule, name), interval)


def _check_range(path: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise InvalidSpec(path, f"got {value}; must be between {low} and {high}")


def _check_float(path: str, value: float, interval: Interval) -> None:
    if value not in interval:
        raise InvalidSpec(path, f"got {_num(value)}; must be in {interval}")


def _check_enum(path: str, value: int, enum: EnumDescriptor) -> None:
    # A client may send any int for an open proto3 enum; only defined numbers are meaningful.
    if value not in enum.values_by_number:
        raise InvalidSpec(path, f"got {value}; must be one of {_enum_names(enum)}")


# ---------------------------------------------------------------------------------------------
# Serialization and small helpers


def spec_to_dict(spec: pb.JobSpec) -> dict:
    """The spec in protobuf's JSON mapping (camelCase keys, enum names); loads back identically."""
    return json_format.MessageToDict(spec)


def spec_to_json(spec: pb.JobSpec) -> str:
    return json_format.MessageToJson(spec, indent=2)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _num(value: float) -> str:
    return f"{value:g}"


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def _type_name(value: Any) -> str:
    return {list: "a list", str: "a string"}.get(type(value), type(value).__name__)
