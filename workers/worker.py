"""The gradient worker: a thin Ray actor around the numpy engine.

Each step it receives the current weights and which global batch to train on, and returns, for its
contiguous range of micro-shards, the gradient SUMS of the complete reduction-tree nodes it owns plus
loss sums and sample counts. It never divides by a count: the parameter server does that once.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
import ray
from threadpoolctl import threadpool_limits

from workers.batches import batch_indices, epoch_permutation
from workers.graph_process import skip_torch_probe
from workers.nn import (
    Network,
    ReductionBuffers,
    add_sums,
    assign_microshards,
    microshard_bounds,
    shard_gradients,
)

EVAL_CHUNK_ROWS = 4096  # bounds eval memory: activations of at most this many samples at once


@dataclass(frozen=True)
class ModelPlan:
    """What every process needs to rebuild the same network and batches."""

    layer_sizes: tuple[int, ...]
    activations: tuple[str, ...]
    loss: str
    batch_size: int
    num_microshards: int
    seed: int
    slopes: tuple[float, ...] | None = None  # leaky_relu slope per layer; None: the default
    dropout: tuple[float, ...] | None = None  # rate per layer; None: no dropout
    initializers: tuple[str, ...] | None = None  # per layer; None: "auto"
    label_smoothing: float = 0.0
    huber_delta: float = 1.0
    top_k: int = 5  # evaluation's top-k accuracy

    def network(self) -> Network:
        return Network(
            list(self.layer_sizes),
            list(self.activations),
            self.loss,
            slopes=self.slopes,
            dropout=self.dropout,
            initializers=self.initializers,
            label_smoothing=self.label_smoothing,
            huber_delta=self.huber_delta,
        )


@dataclass(frozen=True)
class StepCommand:
    """One unit of work broadcast to all workers of a job through the compiled graph."""

    kind: str  # "train" or "eval"
    params: np.ndarray
    num_workers: int  # workers taking part; ranks >= num_workers stay idle
    epoch: int = 0  # 1-based, train only
    batch_index: int = 0  # 0-based within the epoch, train only


@dataclass(frozen=True)
class TrainResult:
    """A worker's share of one step: partial sums per reduction-tree node."""

    nodes: list  # [((lo, hi), grad_sum ndarray, loss_sum float, correct int, count int)]
    compute_seconds: float


@dataclass(frozen=True)
class EvalResult:
    loss_sum: float
    correct: int
    count: int
    compute_seconds: float
    sums: dict | None = None  # workers.nn.metrics sums of this worker's share; None if empty


class GradientWorkerCore:
    """The worker's logic without Ray, so it can be tested and benchmarked in one process."""

    def __init__(
        self,
        plan: ModelPlan,
        rank: int,
        x_train: np.ndarray,
        y_train: np.ndarray,
        x_test: np.ndarray | None,
        y_test: np.ndarray | None,
        input_offset: np.ndarray,
        input_scale: np.ndarray,
    ) -> None:
        self.plan = plan
        self.rank = rank
        self.net = plan.network()
        self.x_train, self.y_train = x_train, y_train
        self.x_test, self.y_test = x_test, y_test
        self.offset = input_offset.astype(np.float32)
        self.scale = input_scale.astype(np.float32)
        self._order_epoch = -1
        self._order = np.empty(0, dtype=np.int64)
        self._buffers: ReductionBuffers | None = None  # node sums and scratch, reused every step
        self._raw_rows = np.empty((plan.batch_size, x_train.shape[1]), dtype=x_train.dtype)
        self._input_rows = np.empty((plan.batch_size, x_train.shape[1]), dtype=np.float32)

    def handle(self, command: StepCommand) -> TrainResult | EvalResult:
        if command.kind == "train":
            return self.train_step(command)
        if command.kind == "eval":
            return self.evaluate(command)
        raise ValueError(f"unknown command kind {command.kind!r}")

    def _inputs(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """``(float32(x) - offset) * scale`` into ``out`` (new if None): float32 before any
        arithmetic, the same expression on every worker, so results stay identical."""
        out = np.empty(x.shape, np.float32) if out is None else out
        np.subtract(x, self.offset, out=out, dtype=np.float32)
        out *= self.scale
        return out

    def _train_inputs(self, rows: np.ndarray) -> np.ndarray:
        """`_inputs(x_train[rows])` in buffers kept across steps."""
        raw = self._raw_rows[: len(rows)]
        np.take(self.x_train, rows, axis=0, out=raw)
        return self._inputs(raw, self._input_rows[: len(rows)])

    def _batch(self, epoch: int, batch_index: int) -> np.ndarray:
        if epoch != self._order_epoch:
            self._order = epoch_permutation(self.plan.seed, epoch, len(self.y_train))
            self._order_epoch = epoch
        return batch_indices(self._order, batch_index, self.plan.batch_size)

    def train_step(self, command: StepCommand) -> TrainResult:
        """This worker's share of one step, in buffers reused by the next call: the compiled graph
        copies the returned sums into its channel before that call."""
        start = time.perf_counter()
        m = self.plan.num_microshards
        lo, hi = (
            assign_microshards(m, command.num_workers)[self.rank]
            if self.rank < command.num_workers
            else (0, 0)
        )
        if lo == hi:
            return TrainResult([], 0.0)
        idx = self._batch(command.epoch, command.batch_index)
        bounds = microshard_bounds(len(idx), m)
        first, last = bounds[lo][0], bounds[hi - 1][1]
        rows = idx[first:last]
        local = [(a - first, b - first) for a, b in bounds]  # bounds relative to our rows
        if self._buffers is None or not self._buffers.fits(command.params):
            self._buffers = ReductionBuffers(command.params)
        nodes = shard_gradients(
            self.net,
            command.params,
            self._train_inputs(rows),
            self.y_train[rows],
            local,
            lo,
            hi,
            self._buffers,
            dropout_key=(self.plan.seed, command.epoch, command.batch_index),
        )
        return TrainResult(nodes, time.perf_counter() - start)

    def evaluate(self, command: StepCommand) -> EvalResult:
        start = time.perf_counter()
        if self.x_test is None or self.rank >= command.num_workers:
            return EvalResult(0.0, 0, 0, 0.0)
        n = len(self.y_test)
        first = n * self.rank // command.num_workers
        last = n * (self.rank + 1) // command.num_workers
        loss_sum, sums = 0.0, None
        for a in range(first, last, EVAL_CHUNK_ROWS):
            b = min(a + EVAL_CHUNK_ROWS, last)
            chunk_loss, chunk_sums = self.net.evaluate_sums(
                command.params, self._inputs(self.x_test[a:b]), self.y_test[a:b], self.plan.top_k
            )
            loss_sum += chunk_loss
            sums = add_sums(sums, chunk_sums)
        correct = int(sums["correct"]) if sums else 0
        return EvalResult(loss_sum, correct, last - first, time.perf_counter() - start, sums)


@ray.remote(num_cpus=1, max_restarts=0)
class GradientWorker:
    """Ray actor shell; data arrives as object-store refs resolved zero-copy at construction."""

    def __init__(self, plan: ModelPlan, rank: int, x_train, y_train, x_test, y_test, offset, scale):
        # one BLAS thread: results must not depend on how many threads a node happens to give us
        threadpool_limits(1)
        skip_torch_probe()
        self.core = GradientWorkerCore(plan, rank, x_train, y_train, x_test, y_test, offset, scale)

    def ready(self) -> int:
        return self.core.rank

    def pid(self) -> int:
        """The actor's process id (fault-injection tests kill it)."""
        return os.getpid()

    def handle(self, command: StepCommand) -> TrainResult | EvalResult:
        return self.core.handle(command)
