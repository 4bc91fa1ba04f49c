"""Which evaluation metrics apply: accuracy for class labels only, per-label accuracy for multi-label."""

from __future__ import annotations

import math

import numpy as np
import pytest

from workers.nn import Network, add_sums, summarize


def test_float_targets_have_no_accuracy() -> None:
    """A regression's accuracy and top-k accuracy are NaN (undefined), not a misleading 0."""
    net = Network([3, 2], ["identity"], "mean_squared_error")
    rng = np.random.default_rng(0)
    flat = net.init_params(rng, np.float64)
    _, sums = net.evaluate_sums(flat, rng.standard_normal((10, 3)), rng.standard_normal((10, 2)))
    metrics = summarize(sums, 2)
    assert math.isnan(metrics["accuracy"]) and math.isnan(metrics["top_k_accuracy"])
    assert math.isnan(metrics["label_accuracy"])
    assert math.isfinite(metrics["mse"])


def test_class_labels_keep_their_accuracy_under_any_loss() -> None:
    """Integer labels trained with MSE (one-hot targets) still have an argmax accuracy."""
    net = Network([3, 3], ["identity"], "mean_squared_error")
    weights = np.concatenate([np.eye(3).ravel(), np.zeros(3)])
    logits = np.array([[0.1, 0.5, 0.2], [0.9, 0.0, 0.3]])
    _, sums = net.evaluate_sums(weights, logits, np.array([1, 2]), top_k=2)
    assert summarize(sums, 3)["accuracy"] == 0.5


def test_multi_label_outputs_get_a_per_label_accuracy_that_adds_up_over_shards() -> None:
    """Binary cross-entropy on 0/1 targets: the share of labels whose logit sign matches the target,
    the same whether the test set is evaluated whole or in two parts."""
    net = Network([4, 3], ["identity"], "binary_cross_entropy")
    weights = np.concatenate([np.eye(4)[:, :3].ravel(), np.zeros(3)])
    x = np.array([[1.0, -1.0, 2.0, 0.0], [-1.0, 1.0, -2.0, 0.0], [1.0, 1.0, 1.0, 0.0]])
    targets = np.array([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    # logits = x[:, :3]: predictions 101, 010, 111 against 101, 110, 000 -> 3 + 2 + 0 of 9 right
    parts = [net.evaluate_sums(weights, x[a:b], targets[a:b])[1] for a, b in ((0, 1), (1, 3))]
    metrics = summarize(add_sums(add_sums(None, parts[0]), parts[1]), 3)
    assert metrics["label_accuracy"] == pytest.approx(5 / 9)
    assert math.isnan(metrics["accuracy"])


@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "binary_cross_entropy"])
def test_logit_losses_have_no_regression_metrics(loss: str) -> None:
    """MSE, MAE and R^2 of logits against one-hot rows or 0/1 labels mean nothing: NaN."""
    net = Network([3, 2], ["identity"], loss)
    rng = np.random.default_rng(0)
    flat = net.init_params(rng, np.float64)
    x = rng.standard_normal((10, 3))
    y = rng.integers(0, 2, 10) if loss == "softmax_cross_entropy" else rng.integers(0, 2, (10, 2)) * 1.0
    metrics = summarize(net.evaluate_sums(flat, x, y)[1], 2)
    assert all(math.isnan(metrics[name]) for name in ("mse", "mae", "r2")), metrics
    accuracy = metrics["accuracy" if loss == "softmax_cross_entropy" else "label_accuracy"]
    assert 0.0 <= accuracy <= 1.0


def test_a_regression_loss_on_class_labels_keeps_its_regression_metrics() -> None:
    """MSE trained on integer labels predicts their one-hot rows: its MSE is a real figure."""
    net = Network([3, 2], ["identity"], "mean_squared_error")
    rng = np.random.default_rng(0)
    flat = net.init_params(rng, np.float64)
    x, y = rng.standard_normal((10, 3)), rng.integers(0, 2, 10)
    z = net.forward(flat, x)
    metrics = summarize(net.evaluate_sums(flat, x, y)[1], 2)
    assert metrics["mse"] == pytest.approx(np.mean((z - np.eye(2)[y]) ** 2))
