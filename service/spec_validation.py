"""Job spec validation: the ranges and rules a filled (with_defaults) spec must keep.

`validate_spec` checks a spec on its own (names, layers, losses, optimizer and schedule, worker
counts, recovery budgets) and `validate_against_dataset` what depends on the data (the output layer's
units, the exact parameter count, batch size and warmup against the training set). Each raises
`InvalidSpec` naming the field path, the value received and what is allowed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf.descriptor import EnumDescriptor
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from google.protobuf.message import Message

from gradfleet.v1 import coordinator_pb2 as pb
from service.datasets.core import TargetRange
from service.errors import InvalidSpec
from service.spec import UINT32_MAX, enum_names
from service.spec_defaults import (
    LEAKY_RELU_SLOPE,
    OPTIMIZER_DEFAULTS,
    SCHEDULE_DEFAULTS,
    with_defaults,
)
from service.wording import plural
from workers.batches import steps_per_epoch

MAX_NAME_CHARS = 128
MAX_LAYERS = 64  # deeper plain MLPs do not train; 100,000 layers made a 12 MB Job record
MAX_LAYER_UNITS = 1_000_000
MAX_MICRO_SHARDS = 1024
DATASET_URI_HELP = 'use "fashion-mnist", "idx:DIR", "npz:FILE" or "csv:FILE"'
_URI_SCHEMES = ("idx:", "npz:", "csv:")
MAX_REQUEST_ID_CHARS = 128
MAX_URI_CHARS = 4096  # Linux's PATH_MAX; an error quoting a longer one would not fit a gRPC status
MAX_RETRIES = 100  # worker restarts or rollbacks: beyond this a job is not recovering, only looping


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
# Options only some kinds use (the others: every kind), and those kinds. Set to anything but its
# default with another kind, an option would be silently ignored: it is refused instead.
_LOSS_OPTION_USERS = {
    "label_smoothing": (pb.SOFTMAX_CROSS_ENTROPY,),
    "huber_delta": (pb.HUBER,),
    "eval_top_k": (pb.SOFTMAX_CROSS_ENTROPY,),  # top-k accuracy needs class scores
}
_RECOVERY_OPTION_USERS = dict.fromkeys(("rollback_lr_factor", "max_rollbacks"), (pb.ROLLBACK,))
# The values with_defaults fills in, so a filled spec (GetJob's) validates again.
_FILLED = with_defaults(pb.JobSpec())
_LOSS_FILLED = {name: getattr(_FILLED, name) for name in _LOSS_OPTION_USERS}
_RECOVERY_FILLED = {name: getattr(_FILLED, name) for name in _RECOVERY_OPTION_USERS}
_ADAM_LIKE = (pb.ADAM, pb.ADAMW)
_OPTIMIZER_OPTION_USERS = {
    "momentum": (pb.MOMENTUM, pb.NESTEROV),
    "beta1": _ADAM_LIKE,
    "beta2": _ADAM_LIKE,
    "epsilon": (*_ADAM_LIKE, pb.RMSPROP, pb.ADAGRAD),
    "rho": (pb.RMSPROP,),
}
_SCHEDULE_OPTION_USERS = {
    "gamma": (pb.STEP, pb.MULTI_STEP, pb.EXPONENTIAL),
    "step_epochs": (pb.STEP,),
    "min_learning_rate": (pb.COSINE,),
    "milestones": (pb.MULTI_STEP,),
    **dict.fromkeys(("pct_start", "div_factor", "final_div_factor"), (pb.ONE_CYCLE,)),
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
    _check_num_workers(spec.num_workers, max_workers)
    _check_micro_shards(spec.micro_shards, spec.batch_size)
    _check_recovery(spec)


def _check_num_workers(num_workers: int, max_workers: int) -> None:
    if not 1 <= num_workers <= max_workers:
        raise InvalidSpec("num_workers", f"got {num_workers}; {workers_allowed(max_workers)}")


def workers_allowed(max_workers: int) -> str:
    """What num_workers may be, and the flag that sets the ceiling."""
    return f"must be between 1 and {max_workers} (--max-workers-per-job)"


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
    _check_printable("request_id", spec.request_id)
    _check_enum("on_divergence", spec.on_divergence, pb.DivergencePolicy.DESCRIPTOR)
    kind = ("on_divergence", pb.DivergencePolicy, spec.on_divergence)
    _check_unused_options("", spec, kind, _RECOVERY_OPTION_USERS, _RECOVERY_FILLED)
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
    target_range: TargetRange | None = None,
) -> None:
    """Raise InvalidSpec where the spec does not fit the dataset.

    `num_classes` is 0 for float (regression) targets, which have `target_width` columns and
    values in `target_range`. None for any of them means unknown (a large CSV file not yet
    parsed): what depends on it is checked when the job loads the data.
    """
    if num_classes is not None:
        _check_output_layer(spec, num_classes, target_width, target_range)
    if target_range is not None:
        _check_target_range(spec, target_range)
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
            f"got {spec.batch_size}; the training set has only {plural(num_train, 'sample')}",
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
            f"epoch x {plural(spec.epochs, 'epoch')})",
        )


_REGRESSION_LOSSES = "MEAN_SQUARED_ERROR, MEAN_ABSOLUTE_ERROR or HUBER"


def _check_output_layer(
    spec: pb.JobSpec, num_classes: int, target_width: int | None, targets: TargetRange | None
) -> None:
    last = len(spec.layers) - 1
    units = spec.layers[last].units
    if num_classes == 0 and spec.loss == pb.SOFTMAX_CROSS_ENTROPY:
        if targets is not None and targets.whole:  # labels, one of them beyond any class index
            _refuse_huge_label(f"layers[{last}].units", units, targets)
        raise InvalidSpec(
            "loss",
            "got SOFTMAX_CROSS_ENTROPY; the dataset has float targets, which need MEAN_SQUARED_ERROR, "
            "MEAN_ABSOLUTE_ERROR, HUBER or (0/1 multi-label targets) BINARY_CROSS_ENTROPY",
        )
    if num_classes == 1 and spec.loss == pb.SOFTMAX_CROSS_ENTROPY:
        raise InvalidSpec(
            "loss",
            "got SOFTMAX_CROSS_ENTROPY; every label in the dataset is 0, a single class: softmax over "
            "one class gives loss 0 whatever the inputs, so nothing would be learned; a classifier "
            "needs labels of at least 2 classes (check the label column or array)",
        )
    # Class labels become one-hot targets for the other losses, so every loss needs one unit per class.
    hint = ""
    if num_classes:
        wanted, what = num_classes, f"{num_classes} class{'es' if num_classes != 1 else ''}"
        # A single wild label (say 10**9) shows up as a huge class count: say where it comes from.
        hint = f" (labels run 0..{num_classes - 1}; if the largest is a mistake, fix the data)"
    else:
        wanted, what = target_width, plural(target_width or 0, "target column")
    if wanted is not None and units != wanted:
        raise InvalidSpec(
            f"layers[{last}].units",
            f"got {units}; the dataset has {what}, so the last layer needs {plural(wanted, 'unit')}{hint}",
        )


def _refuse_huge_label(path: str, units: int, targets: TargetRange) -> None:
    """Whole-number labels read as float targets only because one is too large for a class index:
    name it, and the range the output layer gives, rather than calling the labels floats."""
    low_end = -targets.low > targets.high
    value, where = (targets.low, targets.low_at) if low_end else (targets.high, targets.high_at)
    raise InvalidSpec(
        path,
        f"got {units}; the labels are whole numbers, but {where} has {_num(value)}, out of range for "
        f"the output layer: with {plural(units, 'unit')} the labels must run 0..{units - 1}; fix that "
        f"label, or for numeric targets choose {_REGRESSION_LOSSES}",
    )


def _check_target_range(spec: pb.JobSpec, targets: TargetRange) -> None:
    """Binary cross-entropy of a target outside [0, 1] has no minimum: the loss runs negative."""
    if spec.loss != pb.BINARY_CROSS_ENTROPY or 0 <= targets.low <= targets.high <= 1:
        return
    value, where = (targets.low, targets.low_at) if targets.low < 0 else (targets.high, targets.high_at)
    raise InvalidSpec(
        "loss",
        f"got BINARY_CROSS_ENTROPY; binary cross-entropy needs targets in [0, 1], but {where} has "
        f"{_num(value)} (the targets range over [{_num(targets.low)}, {_num(targets.high)}]); "
        f"rescale the targets, or choose {_REGRESSION_LOSSES}",
    )


def count_params(input_size: int, spec: pb.JobSpec) -> int:
    """Weights plus biases of the dense stack: sum of (fan_in + 1) * units over the layers."""
    total, fan_in = 0, input_size
    for layer in spec.layers:
        total += (fan_in + 1) * layer.units
        fan_in = layer.units
    return total


def _limit(max_params: int) -> str:
    return f"the limit is {max_params:,} (--max-params); use fewer or smaller layers"


def _check_name(name: str) -> None:
    if len(name) > MAX_NAME_CHARS:
        raise InvalidSpec("name", f"got {len(name)} characters; must be at most {MAX_NAME_CHARS}")
    if not name.strip():  # with_defaults fills an empty one: this is only spaces
        raise InvalidSpec(
            "name", f'got only white space ({len(name)} characters); give a name, or leave it out for "job"'
        )
    _check_printable("name", name)


def _check_printable(path: str, text: str) -> None:
    """Names and request ids are printed to other users' terminals (`gradfleet list`, `submit`): no
    escapes, newlines, NULs or bidirectional overrides (U+202E), which str.isprintable() excludes."""
    bad = next((i for i, ch in enumerate(text) if not ch.isprintable()), None)
    if bad is not None:
        raise InvalidSpec(
            path,
            f"character {bad + 1} is U+{ord(text[bad]):04X}, which is not printable; "
            "use letters, digits, punctuation and spaces",
        )


def _check_dataset(dataset: pb.DatasetSpec) -> None:
    uri = dataset.uri
    if len(uri) > MAX_URI_CHARS:
        raise InvalidSpec("dataset.uri", f"got {len(uri):,} characters; must be at most {MAX_URI_CHARS:,}")
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
    users, default = {"slope": (pb.LEAKY_RELU,)}, {"slope": LEAKY_RELU_SLOPE}
    _check_unused_options(
        f"{path}.", layer, (f"{path}.activation", pb.Activation, layer.activation), users, default
    )
    _check_enum(f"{path}.init", layer.init, pb.Initializer.DESCRIPTOR)
    if layer.HasField("slope"):
        _check_float(f"{path}.slope", layer.slope, FRACTION)
    _check_float(f"{path}.dropout", layer.dropout, FRACTION)
    if is_last and layer.dropout != 0:
        raise InvalidSpec(
            f"{path}.dropout", f"got {_num(layer.dropout)}; must be 0 on the last layer (the output)"
        )


def _check_loss_options(spec: pb.JobSpec) -> None:
    kind = ("loss", pb.Loss, spec.loss)
    _check_unused_options("", spec, kind, _LOSS_OPTION_USERS, _LOSS_FILLED)
    _check_float("label_smoothing", spec.label_smoothing, FRACTION)
    _check_float("huber_delta", spec.huber_delta, HUBER_DELTA)
    _check_range("eval_top_k", spec.eval_top_k, 1, MAX_LAYER_UNITS)


def _check_optimizer(opt: pb.OptimizerSpec, epochs: int) -> None:
    _check_enum("optimizer.kind", opt.kind, pb.OptimizerKind.DESCRIPTOR)
    kind = ("optimizer.kind", pb.OptimizerKind, opt.kind)
    _check_unused_options("optimizer.", opt, kind, _OPTIMIZER_OPTION_USERS, OPTIMIZER_DEFAULTS)
    for name, interval in _OPTIMIZER_RANGES.items():
        _check_float(f"optimizer.{name}", getattr(opt, name), interval)
    schedule = opt.schedule
    _check_enum("optimizer.schedule.kind", schedule.kind, pb.ScheduleKind.DESCRIPTOR)
    kind = ("optimizer.schedule.kind", pb.ScheduleKind, schedule.kind)
    _check_unused_options("optimizer.schedule.", schedule, kind, _SCHEDULE_OPTION_USERS, SCHEDULE_DEFAULTS)
    _check_schedule_options(schedule, epochs)
    _check_range("optimizer.schedule.step_epochs", schedule.step_epochs, 1, UINT32_MAX)
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


def _check_unused_options(
    prefix: str,
    message: Message,
    kind: tuple[str, EnumTypeWrapper, int],
    users: dict[str, tuple[int, ...]],
    defaults: dict,
) -> None:
    """InvalidSpec for the first option in `users` set to other than its default (a repeated one:
    not empty) while `kind` (path, enum, value) is none of the kinds that use it."""
    kind_path, enum, value = kind
    for name, kinds in users.items():
        field = getattr(message, name)
        if value in kinds:
            continue
        if name in defaults:
            if not message.HasField(name) or field == defaults[name]:
                continue
            shown = _num(field) if isinstance(field, float) else str(field)
        elif field:  # a repeated field: set when not empty
            shown = str(list(field))
        else:
            continue
        names = [enum.Name(k) for k in kinds]
        who = f"only {names[0]} uses it" if len(names) == 1 else f"only {_and(names)} use it"
        raise InvalidSpec(
            f"{prefix}{name}",
            f"got {shown}, but {kind_path} is {enum.Name(value)}: {who}; remove it or choose "
            f"{names[0] if len(names) == 1 else 'one of those'}",
        )


def _and(names: list[str]) -> str:
    return ", ".join(names[:-1]) + " and " + names[-1]


def _check_range(path: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise InvalidSpec(path, f"got {value}; must be between {low} and {high}")


def _check_float(path: str, value: float, interval: Interval) -> None:
    if value not in interval:
        raise InvalidSpec(path, f"got {_num(value)}; must be in {interval}")


def _check_enum(path: str, value: int, enum: EnumDescriptor) -> None:
    # A client may send any int for an open proto3 enum; only defined numbers are meaningful.
    if value not in enum.values_by_number:
        raise InvalidSpec(path, f"got {value}; must be one of {enum_names(enum)}")


def _num(value: float) -> str:
    return f"{value:g}"
