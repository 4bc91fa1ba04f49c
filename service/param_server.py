"""The parameter server: the flat parameter vector, one optimizer and a schedule.

`ParameterServer` is the pure update rule; `ParameterServerActor` is the Ray actor that also drives
the job's compiled worker graph, so the reduce and update happen where the graph returns and the
coordinator only hears from it a few times a second.
"""

from __future__ import annotations

import collections
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import ray

from service.errors import TrainingFailed
from workers.batches import steps_per_epoch
from workers.graph_process import skip_torch_probe
from workers.group import WorkerGroup, WorkerLost
from workers.nn import Optimizer, ReductionBuffers, add_sums, clip_by_global_norm, summarize, tree_reduce
from workers.worker import StepCommand

# A step whose gradient norm is this many times the median of the last steps' is treated like a
# non-finite one: generous, so healthy training (whose norms drift slowly) never trips it.
SPIKE_FACTOR = 1000.0
# ... and at least this large: a converged model's gradient norms shrink toward 0 (1e-8 on an easy
# dataset), where a jump to 1e-5 is 1000 times the median but no danger to the weights.
SPIKE_MIN_NORM = 1.0
SPIKE_HISTORY_STEPS = 100
SPIKE_MIN_HISTORY = 20
# The part of the last step's compute time the parameter server sleeps before reading the next
# step's results (see ParameterServerCore._one_step); shorter sleeps than IDLE_MIN_S overshoot by
# more than the spinning they save.
IDLE_FRACTION = 0.75
IDLE_MIN_S = 0.0005
# Why a first step (no update applied yet, so no learning rate involved) is non-finite, when the
# coordinator does not say more (see service.jobsetup.first_step_advice).
FIRST_STEP_ADVICE = (
    "the inputs are probably too large; scale them (dataset.preprocessing SCALE or STANDARDIZE)"
)


class ParameterServer:
    """Holds parameters, an optimizer and a learning-rate schedule; applies averaged gradients."""

    def __init__(self, params: np.ndarray, optimizer: Optimizer, schedule, clip_norm: float = 0.0) -> None:
        self.params = params
        self.optimizer = optimizer
        self.schedule = schedule
        self.clip_norm = clip_norm  # max global L2 norm of the averaged gradient; 0 = no clipping
        self.step = 0  # optimizer steps applied so far
        self.lr_scale = 1.0  # divergence rollbacks lower the whole schedule by this factor

    def learning_rate(self) -> float:
        return float(self.schedule(self.step)) * self.lr_scale

    def state(self) -> TrainingState:
        """A copy of everything that decides the next updates."""
        return TrainingState(self.step, self.params.copy(), self.optimizer.state_dict(), self.lr_scale)

    def restore(self, state: TrainingState, fresh_optimizer: Optimizer) -> None:
        """Continue from `state`; an empty optimizer state means a freshly built optimizer."""
        np.copyto(self.params, state.params)
        self.optimizer = fresh_optimizer
        if state.optimizer:
            self.optimizer.load_state_dict(state.optimizer)
        self.step = state.step
        self.lr_scale = state.lr_scale

    def apply(self, grad_sum: np.ndarray, count: int) -> float:
        """Divide the summed gradient by the total sample count (in place), clip it to `clip_norm`,
        step; return the rate."""
        lr = self.learning_rate()
        grad_sum *= np.asarray(1.0 / count, dtype=grad_sum.dtype)
        if self.clip_norm > 0:
            clip_by_global_norm(grad_sum, self.clip_norm)
        self.optimizer.step(self.params, grad_sum, lr)
        self.step += 1
        return lr


@dataclass
class TrainingState:
    """What the parameter server hands out for a checkpoint and takes back to resume."""

    step: int
    params: np.ndarray
    optimizer: dict  # Optimizer.state_dict(); {} = a fresh optimizer
    lr_scale: float = 1.0


class Diverged(TrainingFailed):
    """The loss or gradient became non-finite; nothing was applied for that step. `loss` is the
    non-finite mean loss when the loss was what broke, else None."""

    def __init__(self, message: str, loss: float | None = None) -> None:
        super().__init__(message)
        self.loss = loss

    def __reduce__(self):  # crosses from the parameter-server actor to the coordinator
        return (type(self), (self.message, self.loss))


@dataclass
class StepStats:
    """What one applied step looked like; times in seconds."""

    epoch: int
    step: int  # 1-based count of applied steps after this one
    samples: int
    loss: float  # mean over the step's samples
    learning_rate: float
    grad_norm: float
    step_seconds: float
    compute_seconds: float  # slowest worker's compute
    reduce_seconds: float
    apply_seconds: float

    @property
    def wait_seconds(self) -> float:
        """Transfer and scheduling: what the step cost beyond compute, reduce and apply."""
        return max(0.0, self.step_seconds - self.compute_seconds - self.reduce_seconds - self.apply_seconds)


@dataclass
class TrainReport:
    steps: list[StepStats] = field(default_factory=list)
    finished: bool = False  # all epochs done
    # Why training stopped early: WorkerLost or Diverged, raised before that step's update was
    # applied, so the parameters are those after the last step in `steps`.
    failure: Exception | None = None
    failed_step: int = 0  # the 1-based step that was being computed


def reduce_results(
    results: list, num_microshards: int, out: np.ndarray, buffers: ReductionBuffers | None = None
) -> tuple[np.ndarray, float, int]:
    """Combine workers' node partial sums along the fixed tree into `out` (with `buffers`, kept
    across steps, for inner sums).

    Returns (gradient sum, loss sum, samples); all three are the same bits whatever the worker count.
    Arrays received from the graph may be read-only views of a channel buffer, so the sum lands in `out`.
    """
    grads, losses, counts = {}, {}, {}
    for result in results:
        for node, grad, node_loss, _correct, node_count in result.nodes:
            grads[node], losses[node], counts[node] = grad, node_loss, node_count
    grad = tree_reduce(grads, num_microshards, out=out, buffers=buffers)
    return grad, tree_reduce(losses, num_microshards), tree_reduce(counts, num_microshards)


class ParameterServerCore:
    """The step loop without Ray's actor wrapper."""

    def __init__(
        self,
        group: WorkerGroup,
        server: ParameterServer,
        num_train: int,
        epochs: int,
        step_timeout_s: float,
        first_step_advice: str = FIRST_STEP_ADVICE,
    ) -> None:
        self.group = group
        self.first_step_advice = first_step_advice
        self.server = server
        self.plan = group.plan
        self.steps_per_epoch = steps_per_epoch(num_train, self.plan.batch_size)
        self.total_steps = self.steps_per_epoch * epochs
        self.step_timeout_s = step_timeout_s
        self._grad = np.empty_like(server.params)
        self._reduction = ReductionBuffers(self._grad)
        self._recent_norms: collections.deque[float] = collections.deque(maxlen=SPIKE_HISTORY_STEPS)
        self._recent_compute_s = (0.0, 0.0)  # slowest worker's compute in the last two steps

    def _position(self) -> tuple[int, int]:
        step = self.server.step
        return step // self.steps_per_epoch + 1, step % self.steps_per_epoch

    def train(self, until_step: int, max_seconds: float) -> TrainReport:
        """Apply steps until `until_step` steps are done, an epoch ends, or about `max_seconds` pass."""
        report = TrainReport()
        deadline = time.perf_counter() + max_seconds
        until_step = min(until_step, self.total_steps)
        while self.server.step < until_step:
            try:
                stats = self._one_step()
            except (WorkerLost, Diverged) as exc:
                # Without its traceback: the frames hold views of the graph's channel buffers,
                # and a view that outlives its step blocks the workers (see workers/group.py).
                exc.__context__ = exc.__cause__ = None
                report.failure, report.failed_step = exc.with_traceback(None), self.server.step + 1
                break
            report.steps.append(stats)
            if self.server.step % self.steps_per_epoch == 0 or time.perf_counter() > deadline:
                break
        report.finished = self.server.step >= self.total_steps
        return report

    def _one_step(self) -> StepStats:
        start = time.perf_counter()
        epoch, batch_index = self._position()
        command = StepCommand("train", self.server.params, self.group.size, epoch, batch_index)
        results = self.group.run(command, self.step_timeout_s, idle_s=self._idle_s())
        reduce_start = time.perf_counter()
        grad, loss_sum, count = reduce_results(
            results, self.plan.num_microshards, self._grad, self._reduction
        )
        norm = math.sqrt(float(np.dot(grad, grad))) / count
        apply_start = time.perf_counter()
        self._check_finite(loss_sum, norm, epoch)
        self._check_spike(norm, epoch)
        lr = self.server.apply(grad, count)
        end = time.perf_counter()
        compute = max((r.compute_seconds for r in results), default=0.0)
        self._recent_compute_s = (self._recent_compute_s[1], compute)
        return StepStats(
            epoch=epoch,
            step=self.server.step,
            samples=count,
            loss=loss_sum / count,
            learning_rate=lr,
            grad_norm=norm,
            step_seconds=end - start,
            compute_seconds=compute,
            reduce_seconds=apply_start - reduce_start,
            apply_seconds=end - apply_start,
        )

    def _idle_s(self) -> float:
        """How long a step sleeps before reading its results: through most of the compute rather than
        spin in Ray's read, which on a machine with a core per worker takes CPU from the workers.
        Early by a margin for jitter, and from the shorter of the last two steps so that one stalled
        step does not slow the next."""
        idle = IDLE_FRACTION * min(self._recent_compute_s)
        return idle if idle >= IDLE_MIN_S else 0.0

    def _check_finite(self, loss_sum: float, grad_norm: float, epoch: int) -> None:
        if math.isfinite(loss_sum) and math.isfinite(grad_norm):
            return
        what = "loss" if not math.isfinite(loss_sum) else "gradient"
        value = loss_sum if what == "loss" else grad_norm
        became = f"{what} became {'NaN' if math.isnan(value) else 'infinite'} at epoch {epoch}"
        lr = f"{self.server.learning_rate():.3g}"
        if self.server.step == 0:  # the initial weights: no update, so no learning rate, led here
            advice = (
                f"before any update, so the learning rate ({lr}) is not the cause: {self.first_step_advice}"
            )
            where = f"step 1, {advice}"
        else:
            step = self.server.step + 1
            where = f"step {step} (learning rate {lr}); lower the learning rate or enable clipping"
        raise Diverged(f"{became} {where}", loss=loss_sum if what == "loss" else None)

    def forget_history(self) -> None:
        """After a rollback the norms of the abandoned steps are no reference."""
        self._recent_norms.clear()

    def _check_spike(self, grad_norm: float, epoch: int) -> None:
        """A gradient norm SPIKE_FACTOR times the recent median (and over SPIKE_MIN_NORM) is a
        blow-up in the making."""
        history = self._recent_norms
        if len(history) >= SPIKE_MIN_HISTORY:
            median = statistics.median(history)
            if median > 0 and grad_norm > max(SPIKE_FACTOR * median, SPIKE_MIN_NORM):
                raise Diverged(
                    f"gradient norm {grad_norm:.3g} is {grad_norm / median:.0f} times its recent median "
                    f"at epoch {epoch} step {self.server.step + 1} (learning rate "
                    f"{self.server.learning_rate():.3g}); lower the learning rate or enable clipping"
                )
        history.append(grad_norm)

    def evaluate(self) -> tuple[float, float, int, dict[str, float]]:
        """Test-set (mean loss, accuracy, samples, other metrics) with the current parameters;
        the other metrics are workers.nn.metrics.summarize's top_k_accuracy, label_accuracy, mse,
        mae and r2. Accuracy is NaN for float targets: there it means nothing."""
        command = StepCommand("eval", self.server.params, self.group.size)
        results = self.group.run(command, self.step_timeout_s)
        count = sum(r.count for r in results)
        if count == 0:
            return float("nan"), float("nan"), 0, {}
        sums = None
        for result in results:
            if result.sums is not None:
                sums = add_sums(sums, result.sums)
        metrics = summarize(sums, self.plan.layer_sizes[-1]) if sums else {}
        accuracy = metrics.pop("accuracy", math.nan)
        return sum(r.loss_sum for r in results) / count, accuracy, count, metrics


@ray.remote(num_cpus=0, max_restarts=0)
class ParameterServerActor:
    """Runs on the cluster, not in the gRPC process; num_cpus=0 because it mostly waits on workers."""

    def __init__(
        self,
        group: WorkerGroup,
        params: np.ndarray,
        make_optimizer: Callable[[], Optimizer],
        schedule,
        num_train: int,
        epochs: int,
        step_timeout_s: float,
        clip_norm: float = 0.0,
        state: TrainingState | None = None,
        first_step_advice: str = FIRST_STEP_ADVICE,
    ) -> None:
        skip_torch_probe()
        # Arrays arrive as read-only views of the object store: own a writable copy.
        server = ParameterServer(params.copy(), make_optimizer(), schedule, clip_norm)
        self.make_optimizer = make_optimizer
        if state is not None:
            server.restore(state, make_optimizer())
        self.core = ParameterServerCore(group, server, num_train, epochs, step_timeout_s, first_step_advice)
        group.compile()

    def state(self) -> TrainingState:
        return self.core.server.state()

    def restore(self, state: TrainingState) -> int:
        """Roll back to `state` (a checkpoint); returns the step it resumes after."""
        self.core.server.restore(state, self.make_optimizer())
        self.core.forget_history()
        return self.core.server.step

    def set_group(self, group: WorkerGroup) -> None:
        """Drive a group with replaced workers: the old graph is torn down, a new one compiled."""
        self.core.group.release_graph()
        self.core.group = group
        group.compile()

    def train(self, until_step: int, max_seconds: float) -> TrainReport:
        return self.core.train(until_step, max_seconds)

    def evaluate(self) -> tuple[float, float, int, dict[str, float]]:
        return self.core.evaluate()

    def params(self) -> np.ndarray:
        return self.core.server.params

    def pid(self) -> int:
        """The actor's process id (fault-injection tests kill it)."""
        return os.getpid()

    def close(self) -> None:
        self.core.group.release_graph()
