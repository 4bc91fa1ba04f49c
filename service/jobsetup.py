"""What a job needs before training starts, derived from its spec: the data (loaded once and cached),
the model plan the workers rebuild the network from, and the optimizer and schedule."""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gradfleet.v1 import coordinator_pb2 as pb
from service.config import ServerConfig
from service.datasets import Dataset, compute_normalization, dataset_location, load_dataset
from service.datasets.probe import Fingerprint, check_declared_size, check_size, fingerprint
from workers.batches import steps_per_epoch
from workers.nn import make_optimizer, make_schedule
from workers.worker import ModelPlan


@dataclass(frozen=True)
class PreparedData:
    dataset: Dataset
    offset: np.ndarray
    scale: np.ndarray
    first_step_advice: str  # what to say when the very first step is not finite (see first_step_advice)


@dataclass(frozen=True)
class _Cached:
    dataset: Dataset
    files: tuple[Path, ...]  # the files it was read from
    stamp: Fingerprint  # their sizes and modification times just before the read


class DatasetCache:
    """Keeps the most recently used datasets in memory: reading Fashion-MNIST's gzip files takes
    seconds, and a coordinator often runs many jobs on the same data. A cached dataset is served
    only while its files keep their size and modification time; a changed file is read again."""

    def __init__(self, config: ServerConfig, capacity: int = 2) -> None:
        self._config = config
        self._capacity = capacity
        self._lock = threading.Lock()
        self._items: dict[tuple[str, Path], _Cached] = {}

    def load(self, uri: str) -> Dataset:
        """The dataset `uri` names. Its size is checked against --max-dataset-bytes before reading
        (what the headers declare) and after (the arrays in memory): a job re-queued by a restart
        gets here without passing admission again. LimitExceeded or DatasetError if unusable."""
        config = self._config
        # Keyed by where the data is now too: fashion-mnist may have moved to DATA_ROOT since.
        key = (uri, dataset_location(uri, config.data_root, extra_search=config.dataset_search))
        with self._lock:
            entry = self._items.pop(key, None)
            if entry is not None and entry.stamp and fingerprint(entry.files) == entry.stamp:
                self._items[key] = entry  # most recent last
                return entry.dataset
        files = check_declared_size(
            uri, config.data_root, extra_search=config.dataset_search, max_bytes=config.max_dataset_bytes
        )
        stamp = fingerprint(files)  # before reading: a change during the read shows next time
        dataset = load_dataset(uri, config.data_root, extra_search=config.dataset_search)
        check_size(dataset.source, dataset.nbytes, config.max_dataset_bytes)
        with self._lock:
            self._items[key] = _Cached(dataset, files, stamp)
            while len(self._items) > self._capacity:
                self._items.pop(next(iter(self._items)))
        return dataset


def _lower(enum_type, value: int) -> str:
    return enum_type.Name(value).lower()


def model_plan(spec: pb.JobSpec, num_features: int) -> ModelPlan:
    return ModelPlan(
        layer_sizes=(num_features, *(layer.units for layer in spec.layers)),
        activations=tuple(_lower(pb.Activation, layer.activation) for layer in spec.layers),
        loss=_lower(pb.Loss, spec.loss),
        batch_size=spec.batch_size,
        num_microshards=spec.micro_shards,
        seed=spec.seed,
        slopes=tuple(layer.slope if layer.HasField("slope") else 0.01 for layer in spec.layers),
        dropout=tuple(layer.dropout for layer in spec.layers),
        initializers=tuple(_initializer(layer) for layer in spec.layers),
        label_smoothing=spec.label_smoothing,
        huber_delta=spec.huber_delta,
        top_k=spec.eval_top_k,
    )


def _initializer(layer: pb.LayerSpec) -> str:
    if layer.init == pb.INITIALIZER_UNSPECIFIED:
        return "auto"
    return _lower(pb.Initializer, layer.init)


def build_optimizer(spec: pb.JobSpec, num_params: int, num_train: int):
    """A factory for the optimizer and the learning-rate schedule a (defaults-filled) spec asks for.

    The optimizer is built where it runs (the parameter server), so its state arrays are its own.
    """
    opt = spec.optimizer
    kind = _lower(pb.OptimizerKind, opt.kind)
    optimizer = functools.partial(make_optimizer, kind, num_params, np.float32, **_hyper(kind, opt))
    per_epoch = steps_per_epoch(num_train, spec.batch_size)
    sched = opt.schedule
    schedule = make_schedule(
        _lower(pb.ScheduleKind, sched.kind),
        opt.learning_rate,
        steps_per_epoch=per_epoch,
        total_steps=per_epoch * spec.epochs,
        gamma=sched.gamma,
        step_epochs=sched.step_epochs,
        min_lr=sched.min_learning_rate,
        milestones=tuple(sched.milestones),
        warmup_steps=sched.warmup_steps,
        pct_start=sched.pct_start,
        div_factor=sched.div_factor,
        final_div_factor=sched.final_div_factor,
    )
    return optimizer, schedule


def _hyper(kind: str, opt: pb.OptimizerSpec) -> dict:
    """The constructor arguments of the optimizer `kind` from a defaults-filled spec."""
    hyper: dict = {"weight_decay": opt.weight_decay}
    if kind in ("momentum", "nesterov"):
        hyper["momentum"] = opt.momentum
    if kind in ("adam", "adamw"):
        hyper |= {"beta1": opt.beta1, "beta2": opt.beta2, "epsilon": opt.epsilon}
    if kind == "rmsprop":
        hyper |= {"rho": opt.rho, "epsilon": opt.epsilon}
    if kind == "adagrad":
        hyper["epsilon"] = opt.epsilon
    return hyper


def prepare_data(spec: pb.JobSpec, cache: DatasetCache) -> PreparedData:
    ds = cache.load(spec.dataset.uri)
    n_train = spec.dataset.max_train_samples or len(ds.y_train)
    n_test = spec.dataset.max_test_samples or (0 if ds.y_test is None else len(ds.y_test))
    ds = Dataset(
        x_train=ds.x_train[:n_train],
        y_train=ds.y_train[:n_train],
        x_test=None if ds.x_test is None else ds.x_test[:n_test],
        y_test=None if ds.y_test is None else ds.y_test[:n_test],
        num_classes=ds.num_classes,
        source=ds.source,
        target_range=ds.target_range,
    )
    method = _lower(pb.Preprocessing, spec.dataset.preprocessing)
    norm = compute_normalization(ds.x_train, method)
    return PreparedData(ds, norm.offset, norm.scale, first_step_advice(ds, spec.dataset.preprocessing))


def first_step_advice(ds: Dataset, preprocessing: int) -> str:
    """Why a loss or gradient would be non-finite at the first step, from the initial weights: no
    learning rate is involved yet, so the data is too large, and the advice names its largest
    magnitude (from max and min: abs() of the lowest int64 overflows)."""
    largest = max(abs(float(ds.x_train.max())), abs(float(ds.x_train.min())))
    if preprocessing == pb.NONE:
        return (
            f"the inputs are probably too large (the largest |x| in the training set is {largest:.3g}, "
            "with preprocessing NONE); scale them with dataset.preprocessing SCALE or STANDARDIZE"
        )
    targets = ds.target_range
    span = f", targets in [{targets.low:.3g}, {targets.high:.3g}]" if targets else ""
    return (
        f"the inputs or targets are probably too large (the largest |x| in the training set is "
        f"{largest:.3g} before {pb.Preprocessing.Name(preprocessing)}{span}); rescale them in the file"
    )
