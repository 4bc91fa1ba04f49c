"""The parameter server's update rule and failure detection, run in one process without Ray."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from gradfleet.v1 import coordinator_pb2 as pb
from service.datasets.core import Dataset, TargetRange
from service.errors import TrainingFailed
from service.jobsetup import first_step_advice
from service.param_server import IDLE_FRACTION, IDLE_MIN_S, ParameterServer, ParameterServerCore
from workers.nn import SGD, make_schedule
from workers.worker import GradientWorkerCore, ModelPlan


class InProcessGroup:
    """Stands in for WorkerGroup: one GradientWorkerCore answering each command directly."""

    def __init__(self, plan: ModelPlan, x: np.ndarray, y: np.ndarray) -> None:
        self.plan, self.size = plan, 1
        ones = np.ones(x.shape[1], np.float32)
        self.core = GradientWorkerCore(plan, 0, x, y, x, y, np.zeros_like(ones), ones)

    def run(self, command, timeout_s: float, idle_s: float = 0.0) -> list:
        return [self.core.handle(command)]


def _constant(lr: float):
    return make_schedule("constant", lr, steps_per_epoch=1, total_steps=1)


def test_apply_clips_the_averaged_gradient_to_the_global_norm() -> None:
    """A summed gradient [30, 40] over 10 samples (norm 5) is clipped to norm 1 before SGD."""
    server = ParameterServer(np.zeros(2), SGD(2, np.float64), _constant(1.0), clip_norm=1.0)
    server.apply(np.array([30.0, 40.0]), 10)
    np.testing.assert_allclose(server.params, [-0.6, -0.8])


def test_a_diverging_job_fails_with_a_clear_message() -> None:
    """A learning rate that blows the weights up stops training with a message naming the problem."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((64, 4)).astype(np.float32), rng.integers(0, 3, 64)
    plan = ModelPlan((4, 8, 3), ("relu", "identity"), "softmax_cross_entropy", 32, 2, 0)
    net = plan.network()
    server = ParameterServer(net.init_params(rng), SGD(net.num_params, np.float32), _constant(1e38))
    core = ParameterServerCore(InProcessGroup(plan, x, y), server, 64, epochs=5, step_timeout_s=10)
    with np.errstate(all="ignore"):
        report = core.train(until_step=10, max_seconds=10)
    assert isinstance(report.failure, TrainingFailed)  # returned, not raised: the runner decides
    assert re.search(r"became (NaN|infinite) at epoch", str(report.failure))


def test_evaluate_reports_top_k_and_regression_metrics() -> None:
    """Evaluation returns accuracy <= top-k accuracy and the regression metrics of the outputs."""
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((40, 4)).astype(np.float32), rng.integers(0, 3, 40)
    plan = ModelPlan((4, 3), ("identity",), "mean_squared_error", 8, 1, 0, top_k=2)
    net = plan.network()
    params = net.init_params(rng)
    server = ParameterServer(params, SGD(net.num_params, np.float32), _constant(0.1))
    loss, accuracy, count, other = ParameterServerCore(
        InProcessGroup(plan, x, y), server, 40, epochs=1, step_timeout_s=10
    ).evaluate()
    outputs = net.forward(params, x)
    onehot = np.eye(3)[y]
    assert count == 40 and accuracy <= other["top_k_accuracy"]
    assert other["mse"] == pytest.approx(np.mean((outputs - onehot) ** 2))
    assert loss == pytest.approx(np.mean((outputs - onehot) ** 2), rel=1e-5)


@pytest.mark.parametrize("dtype", [np.uint8, np.float64, np.int64])
def test_a_workers_batch_inputs_match_converting_then_scaling(dtype) -> None:
    """The worker's buffered input path gives the bits of x.astype(float32) - offset, * scale."""
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((300, 6)) * 300).astype(dtype)
    plan = ModelPlan((6, 3), ("identity",), "mean_squared_error", 64, 2, 1)
    offset, scale = rng.standard_normal(6).astype(np.float32), rng.random(6).astype(np.float32)
    core = GradientWorkerCore(plan, 0, x, np.zeros(300), None, None, offset, scale)
    rows = rng.permutation(300)[:64]
    expected = (x[rows].astype(np.float32) - offset) * scale
    assert np.array_equal(core._train_inputs(rows), expected)


class RecordingGroup(InProcessGroup):
    """An InProcessGroup that records each step's idle hint and reports fixed compute times."""

    def __init__(self, plan: ModelPlan, x: np.ndarray, y: np.ndarray, compute_s: list[float]) -> None:
        super().__init__(plan, x, y)
        self.compute_s, self.idle_hints = list(compute_s), []

    def run(self, command, timeout_s: float, idle_s: float = 0.0) -> list:
        self.idle_hints.append(idle_s)
        result = self.core.handle(command)
        return [dataclasses.replace(result, compute_seconds=self.compute_s.pop(0))]


def test_the_parameter_server_sleeps_through_most_of_the_shorter_of_the_last_two_computes() -> None:
    """Ray's channel read spins, so the next read waits IDLE_FRACTION of the last steps' compute;
    the shorter of two, so that one stalled step (0.5 s here) does not delay the next."""
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((64, 4)).astype(np.float32), rng.integers(0, 3, 64)
    plan = ModelPlan((4, 8, 3), ("relu", "identity"), "softmax_cross_entropy", 16, 1, 0)
    net = plan.network()
    server = ParameterServer(net.init_params(rng), SGD(net.num_params, np.float32), _constant(0.1))
    group = RecordingGroup(plan, x, y, [0.004, 0.004, 0.5, 0.004, 0.0004, 0.0004])
    core = ParameterServerCore(group, server, 64, epochs=2, step_timeout_s=10)
    core.train(until_step=6, max_seconds=10)  # one epoch is 4 steps: train stops there
    core.train(until_step=6, max_seconds=10)
    f = IDLE_FRACTION
    assert f * 0.0004 < IDLE_MIN_S  # so the last step does not sleep: it would overshoot
    assert group.idle_hints == pytest.approx([0.0, 0.0, f * 0.004, f * 0.004, f * 0.004, 0.0])


def test_evaluate_reports_no_accuracy_for_a_regression() -> None:
    """Float targets: the accuracy returned is NaN, so no job record or gauge shows a 0 for it."""
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((20, 4)).astype(np.float32), rng.standard_normal((20, 2)).astype(np.float32)
    plan = ModelPlan((4, 2), ("identity",), "huber", 8, 1, 0)
    net = plan.network()
    server = ParameterServer(net.init_params(rng), SGD(net.num_params, np.float32), _constant(0.1))
    _, accuracy, count, other = ParameterServerCore(
        InProcessGroup(plan, x, y), server, 20, epochs=1, step_timeout_s=10
    ).evaluate()
    assert count == 20 and np.isnan(accuracy) and np.isfinite(other["mse"])


def _core_on(x: np.ndarray, lr: float, **kwargs) -> ParameterServerCore:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, len(x))
    plan = ModelPlan((x.shape[1], 8, 3), ("relu", "identity"), "softmax_cross_entropy", 32, 2, 0)
    net = plan.network()
    server = ParameterServer(net.init_params(rng), SGD(net.num_params, np.float32), _constant(lr))
    return ParameterServerCore(
        InProcessGroup(plan, x, y), server, len(x), epochs=5, step_timeout_s=10, **kwargs
    )


def test_a_non_finite_first_step_blames_the_inputs_not_the_learning_rate() -> None:
    """Inputs near float32's maximum make step 1 non-finite from the initial weights, before any
    update: the message says the learning rate is not the cause and gives the inputs' advice (the
    coordinator's, with their largest magnitude, or a default one)."""
    x = np.full((64, 4), 3e38, np.float32)
    for kwargs, advice in [
        ({}, "the inputs are probably too large; scale them (dataset.preprocessing SCALE or STANDARDIZE)"),
        ({"first_step_advice": "the inputs are 3e+38 at most"}, "the inputs are 3e+38 at most"),
    ]:
        with np.errstate(all="ignore"):
            report = _core_on(x, 0.001, **kwargs).train(until_step=10, max_seconds=10)
        assert (report.failed_step, report.steps) == (1, [])
        assert re.fullmatch(
            r"(loss|gradient) became (NaN|infinite) at epoch 1 step 1, before any update, so the learning "
            rf"rate \(0\.001\) is not the cause: {re.escape(advice)}",
            str(report.failure),
        )


def test_a_non_finite_later_step_still_points_at_the_learning_rate() -> None:
    """Once updates were applied the learning rate is the likely cause, and the advice says so."""
    rng = np.random.default_rng(0)
    with np.errstate(all="ignore"):
        report = _core_on(rng.standard_normal((64, 4)).astype(np.float32), 1e38).train(10, 10)
    assert report.failed_step > 1
    assert str(report.failure).endswith("(learning rate 1e+38); lower the learning rate or enable clipping")


def test_the_first_step_advice_names_the_largest_input_and_the_preprocessing() -> None:
    """NONE: scale the inputs; already normalized: the data itself (inputs or targets) is too large."""
    x = np.array([[1.0, -5e30], [2.0, 3.0]], np.float32)
    classes = Dataset(x, np.array([0, 1]), None, None, 2, "test")
    assert first_step_advice(classes, pb.NONE) == (
        "the inputs are probably too large (the largest |x| in the training set is 5e+30, with preprocessing "
        "NONE); scale them with dataset.preprocessing SCALE or STANDARDIZE"
    )
    targets = TargetRange(-1.0, 2e20, "d.npz at sample 0", "d.npz at sample 1")
    regression = Dataset(x, np.array([-1.0, 2e20], np.float32), None, None, 0, "test", targets)
    assert first_step_advice(regression, pb.STANDARDIZE) == (
        "the inputs or targets are probably too large (the largest |x| in the training set is 5e+30 before "
        "STANDARDIZE, targets in [-1, 2e+20]); rescale them in the file"
    )
