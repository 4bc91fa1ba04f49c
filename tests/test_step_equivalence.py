"""One distributed training step equals one single-process step on the same batch, and the parameter
server divides the summed gradient by the total sample count."""

from __future__ import annotations

import numpy as np
import pytest

from service.param_server import ParameterServer, reduce_results
from workers.batches import batch_indices, epoch_permutation, steps_per_epoch
from workers.nn import SGD, full_batch_step_gradient, make_schedule
from workers.worker import GradientWorkerCore, ModelPlan, StepCommand

SEED = 11
N_TRAIN, FEATURES, CLASSES = 99, 12, 4
PLAN = ModelPlan(
    layer_sizes=(FEATURES, 16, 8, CLASSES),
    activations=("tanh", "relu", "identity"),
    loss="softmax_cross_entropy",
    batch_size=32,  # 99 samples: batches of 32, 32, 32 and a last partial one of 3
    num_microshards=5,  # does not divide the batch: shards of unequal size
    seed=SEED,
)
LAST_BATCH = steps_per_epoch(N_TRAIN, PLAN.batch_size) - 1
TOLERANCE = {np.float32: 1e-4, np.float64: 1e-10}


def make_data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SEED)
    return {
        "x_train": rng.integers(0, 256, (N_TRAIN, FEATURES)).astype(np.uint8),  # raw pixels
        "y_train": rng.integers(0, CLASSES, N_TRAIN),
        "x_test": None,
        "y_test": None,
        "offset": np.full(FEATURES, 127.5, dtype=np.float32),
        "scale": np.full(FEATURES, 1 / 64, dtype=np.float32),
    }


def batch_of(data: dict, epoch: int, batch_index: int) -> tuple[np.ndarray, np.ndarray]:
    """The inputs and labels of one global batch, preprocessed as a worker does (float32 first)."""
    rows = batch_indices(epoch_permutation(SEED, epoch, N_TRAIN), batch_index, PLAN.batch_size)
    x = data["x_train"][rows].astype(np.float32)
    x -= data["offset"]
    x *= data["scale"]
    return x, data["y_train"][rows]


def params_of(dtype) -> np.ndarray:
    return PLAN.network().init_params(np.random.default_rng(SEED), dtype=dtype)


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    return make_data()


@pytest.mark.ray
@pytest.mark.parametrize("num_workers", [1, 2, 3])
def test_distributed_step_equals_the_single_process_step(ray_session, data, num_workers: int) -> None:
    """With 1, 2 or 3 Ray workers, a step's reduced gradient is bit-identical to the single-process
    micro-shard reference and close to one big loss_and_grad call, in float32 and float64."""
    import ray

    from workers.group import WorkerGroup

    refs = {name: ray.put(value) for name, value in data.items()}
    group = WorkerGroup.start(PLAN, num_workers, refs)
    try:
        group.compile()  # in this process, which then drives the steps
        for dtype in (np.float32, np.float64):
            params = params_of(dtype)
            for epoch, batch_index in ((1, 0), (2, LAST_BATCH)):
                command = StepCommand("train", params, num_workers, epoch, batch_index)
                results = group.run(command, timeout_s=60)
                got, loss_sum, count = reduce_results(results, PLAN.num_microshards, np.empty_like(params))
                del results  # the graph's arrays are views of channel buffers: do not hold them
                _assert_matches_single_process(data, params, epoch, batch_index, got, loss_sum, count)
    finally:
        group.shutdown()


def _assert_matches_single_process(data, params, epoch, batch_index, got, loss_sum, count) -> None:
    where = f"{params.dtype} epoch {epoch} batch {batch_index}"
    x, y = batch_of(data, epoch, batch_index)
    net = PLAN.network()
    want, want_loss, want_count = full_batch_step_gradient(net, params, x, y, PLAN.num_microshards)
    assert got.dtype == params.dtype, where  # the worker follows the parameters' dtype
    assert count == want_count == len(y), where
    assert np.array_equal(got, want), where
    assert loss_sum == want_loss, where
    one_call = np.empty_like(params)
    one_call_loss = net.loss_and_grad(params, x, y, one_call)
    tol = TOLERANCE[params.dtype.type]
    np.testing.assert_allclose(got, one_call, rtol=tol, atol=tol, err_msg=where)
    assert loss_sum == pytest.approx(one_call_loss, rel=tol), where
    assert np.abs(got).max() > 0, where  # a real gradient, not all zeros


def test_parameter_server_divides_by_the_total_sample_count(data) -> None:
    """On the last partial batch, split unevenly over 3 workers, the update is the sum of gradients
    divided by the summed count (the batch mean), not a mean of per-worker means."""
    params = params_of(np.float64)
    x, y = batch_of(data, 1, LAST_BATCH)
    assert len(y) == N_TRAIN % PLAN.batch_size == 3
    command = StepCommand("train", params, 3, 1, LAST_BATCH)
    cores = [GradientWorkerCore(PLAN, rank, **_worker_data(data)) for rank in range(3)]
    results = [core.handle(command) for core in cores]
    per_worker = [(sum(n[4] for n in r.nodes), _node_sum(r.nodes, params)) for r in results]
    assert [c for c, _ in per_worker] == [2, 1, 0]  # 3 rows in 5 shards over 3 workers: uneven, one idle
    grad_sum, _loss, count = reduce_results(results, PLAN.num_microshards, np.empty_like(params))
    assert count == 3

    lr = 0.5
    schedule = make_schedule("constant", lr, steps_per_epoch=4, total_steps=4)
    server = ParameterServer(params.copy(), SGD(params.size, np.float64), schedule)
    assert server.apply(grad_sum, count) == lr
    batch_mean = np.empty_like(params)
    PLAN.network().loss_and_grad(params, x, y, batch_mean)
    batch_mean /= len(y)
    np.testing.assert_allclose(server.params, params - lr * batch_mean, rtol=1e-12, atol=1e-14)
    mean_of_means = sum(g / c for c, g in per_worker if c) / sum(1 for c, _ in per_worker if c)
    assert not np.allclose(server.params, params - lr * mean_of_means, rtol=1e-6)
    assert server.step == 1


def _worker_data(data: dict) -> dict:
    return {
        "x_train": data["x_train"],
        "y_train": data["y_train"],
        "x_test": None,
        "y_test": None,
        "input_offset": data["offset"],
        "input_scale": data["scale"],
    }


def _node_sum(nodes: list, params: np.ndarray) -> np.ndarray:
    total = np.zeros_like(params)
    for _node, grad, *_ in nodes:
        total += grad
    return total
