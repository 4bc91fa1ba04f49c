"""Micro-shard bounds, worker assignment and the fixed-tree reduction."""

import tracemalloc
import weakref

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.nn import (
    ACTIVATIONS,
    LOSSES,
    Network,
    ReductionBuffers,
    assign_microshards,
    full_batch_step_gradient,
    microshard_bounds,
    shard_gradients,
    tree_nodes,
    tree_reduce,
)


def test_microshard_bounds_are_balanced_and_contiguous() -> None:
    """10 rows in 3 micro-shards give sizes 4, 3, 3; 2 rows in 4 leave the last two empty."""
    assert microshard_bounds(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert microshard_bounds(2, 4) == [(0, 1), (1, 2), (2, 2), (2, 2)]


def test_assign_microshards_gives_extra_workers_empty_ranges() -> None:
    """3 micro-shards over 5 workers give one each to the first three, empty ranges after."""
    assert assign_microshards(3, 5) == [(0, 1), (1, 2), (2, 3), (3, 3), (3, 3)]
    assert assign_microshards(7, 3) == [(0, 3), (3, 5), (5, 7)]


def test_tree_nodes_are_the_maximal_nodes_inside_a_range() -> None:
    """In the tree over [0, 4), [1, 4) is covered by (1, 2) and (2, 4); an empty range by none."""
    assert tree_nodes(0, 4, 4) == [(0, 4)]
    assert tree_nodes(1, 4, 4) == [(1, 2), (2, 4)]
    assert tree_nodes(0, 5, 7) == [(0, 3), (3, 5)]
    assert tree_nodes(2, 2, 4) == []


@given(num_microshards=st.integers(1, 40), num_workers=st.integers(1, 12))
@settings(derandomize=True, deadline=None, max_examples=60)
def test_worker_nodes_partition_all_microshards(num_microshards: int, num_workers: int) -> None:
    """The nodes of all workers' ranges, in order, tile [0, M) exactly."""
    nodes = [
        node
        for lo, hi in assign_microshards(num_microshards, num_workers)
        for node in tree_nodes(lo, hi, num_microshards)
    ]
    assert [lo for lo, _ in nodes] == [0] + [hi for _, hi in nodes[:-1]]
    assert nodes[-1][1] == num_microshards


def test_tree_reduce_adds_along_the_fixed_tree() -> None:
    """Node sums combine into the root sum, written into out=, leaving the inputs unchanged."""
    left, right = np.array([1.0, 2.0]), np.array([10.0, 20.0])
    out = np.empty(2)
    result = tree_reduce({(0, 1): left, (1, 3): right}, 3, out=out)
    assert result is out and out.tolist() == [11.0, 22.0] and left.tolist() == [1.0, 2.0]
    assert tree_reduce({(0, 1): 0.5, (1, 2): 0.25, (2, 3): 2.0}, 3) == 2.75


def test_tree_reduce_names_a_missing_node() -> None:
    """Missing coverage raises ValueError naming the uncovered micro-shard node."""
    with pytest.raises(ValueError, match=r"missing partial sum for micro-shard node \(2, 3\)"):
        tree_reduce({(0, 2): np.zeros(2), (3, 4): np.zeros(2)}, 4)


def test_tree_reduce_rejects_nodes_outside_the_cover() -> None:
    """A node that overlaps another or is not a tree node raises ValueError naming it."""
    with pytest.raises(ValueError, match=r"not needed tree nodes: \[\(0, 1\)\]"):
        tree_reduce({(0, 2): 1.0, (0, 1): 1.0, (2, 4): 1.0}, 4)


def _random_problem(sizes, activations, loss, batch, seed):
    net = Network(sizes, activations, loss)
    rng = np.random.default_rng(seed)
    flat = net.init_params(rng)
    flat += np.float32(0.05) * rng.standard_normal(flat.shape, dtype=np.float32)
    x = rng.standard_normal((batch, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], size=batch)
    return net, flat, x, y


def _distributed_step(net, flat, x, y, num_microshards, num_workers, dropout_key=None):
    """Every worker's shard_gradients on its own rows only, then tree_reduce of everything."""
    bounds = microshard_bounds(len(x), num_microshards)
    grads, losses, count = {}, {}, 0
    for lo, hi in assign_microshards(num_microshards, num_workers):
        if lo == hi:
            continue
        first, last = bounds[lo][0], bounds[hi - 1][1]
        local_bounds = [(start - first, end - first) for start, end in bounds]
        results = shard_gradients(
            net, flat, x[first:last], y[first:last], local_bounds, lo, hi, dropout_key=dropout_key
        )
        for node, grad_sum, loss_sum, _correct, node_count in results:
            grads[node], losses[node] = grad_sum, loss_sum
            count += node_count
    return tree_reduce(grads, num_microshards), tree_reduce(losses, num_microshards), count


layer_stacks = st.lists(st.integers(1, 12), min_size=2, max_size=4).flatmap(
    lambda sizes: st.tuples(
        st.just(sizes),
        st.lists(st.sampled_from(ACTIVATIONS), min_size=len(sizes) - 1, max_size=len(sizes) - 1),
    )
)


@given(
    stack=layer_stacks,
    loss=st.sampled_from(LOSSES),
    batch=st.integers(1, 64),
    num_microshards=st.integers(1, 9),
    seed=st.integers(0, 2**16),
)
@settings(derandomize=True, deadline=None, max_examples=150)
def test_reduction_is_bit_identical_for_any_worker_count(
    stack, loss: str, batch: int, num_microshards: int, seed: int
) -> None:
    """For 1..5 workers the reduced gradient and loss are bit-identical and near one big call."""
    sizes, activations = stack
    net, flat, x, y = _random_problem(sizes, activations, loss, batch, seed)
    reference_grad, reference_loss, count = full_batch_step_gradient(net, flat, x, y, num_microshards)
    assert count == batch
    for num_workers in range(1, 6):
        grad, loss_sum, count = _distributed_step(net, flat, x, y, num_microshards, num_workers)
        assert np.array_equal(grad, reference_grad) and loss_sum == reference_loss
        assert count == batch
    plain_grad = np.empty_like(flat)
    plain_loss = net.loss_and_grad(flat, x, y, plain_grad)
    scale = max(1.0, float(np.abs(plain_grad).max()))
    np.testing.assert_allclose(reference_grad, plain_grad, rtol=1e-4, atol=1e-5 * scale)
    assert reference_loss == pytest.approx(plain_loss, rel=1e-5, abs=1e-5)


def test_more_workers_than_microshards_and_tiny_batches_are_fine() -> None:
    """A batch of 2 in 7 micro-shards over 9 workers reduces without error or NaN."""
    net, flat, x, y = _random_problem([4, 3, 2], ["relu", "identity"], LOSSES[0], 2, seed=0)
    grad, loss_sum, count = _distributed_step(net, flat, x, y, num_microshards=7, num_workers=9)
    expected = np.empty_like(flat)
    expected_loss = net.loss_and_grad(flat, x, y, expected)
    assert count == 2 and np.isfinite(grad).all() and np.isfinite(loss_sum)
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6)
    assert loss_sum == pytest.approx(expected_loss, rel=1e-6)


def test_shard_gradients_reports_correct_counts_per_node() -> None:
    """Each node's correct count equals the argmax hits of its rows."""
    net, flat, x, y = _random_problem([3, 4], ["identity"], LOSSES[0], 20, seed=1)
    bounds = microshard_bounds(20, 4)
    results = shard_gradients(net, flat, x, y, bounds, 1, 4)
    hits = net.forward(flat, x).argmax(axis=1) == y
    assert [(node, correct) for node, _, _, correct, _ in results] == [
        ((1, 2), int(hits[5:10].sum())),
        ((2, 4), int(hits[10:20].sum())),
    ]


def test_adding_node_sums_out_of_tree_order_changes_the_bits() -> None:
    """Negative control: summing worker nodes left to right instead of along the tree differs in
    the last bits, so the bit-identity property above can detect a wrong order."""
    net, flat, x, y = _random_problem([8, 16, 4], ["tanh", "identity"], LOSSES[0], 200, seed=0)
    bounds = microshard_bounds(200, 5)
    partials = {}
    for lo, hi in assign_microshards(5, 2):  # nodes (0, 2), (2, 3), (3, 5)
        for node, grad_sum, *_ in shard_gradients(net, flat, x, y, bounds, lo, hi):
            partials[node] = grad_sum
    left_to_right = (partials[(0, 2)] + partials[(2, 3)]) + partials[(3, 5)]
    tree_order = tree_reduce(partials, 5)
    assert np.array_equal(tree_order, partials[(0, 2)] + (partials[(2, 3)] + partials[(3, 5)]))
    assert not np.array_equal(left_to_right, tree_order)


def test_reused_buffers_give_the_same_bits_and_allocate_nothing_parameter_sized() -> None:
    """A second step with the same ReductionBuffers matches fresh buffers bit for bit, and neither
    the workers' node sums nor the server's reduction allocate a parameter-sized array."""
    net, flat, x, y = _random_problem([50, 200, 10], ["relu", "identity"], LOSSES[0], 32, seed=3)
    bounds = microshard_bounds(32, 4)
    worker_buffers = [ReductionBuffers(flat), ReductionBuffers(flat)]
    server_buffers, out = ReductionBuffers(flat), np.empty_like(flat)

    def step() -> np.ndarray:
        partials = {}
        for (lo, hi), buffers in zip(assign_microshards(4, 2), worker_buffers, strict=True):
            for node, grad_sum, *_ in shard_gradients(net, flat, x, y, bounds, lo, hi, buffers):
                partials[node] = grad_sum
        return tree_reduce(partials, 4, out=out, buffers=server_buffers)

    step()  # first use allocates the buffers
    tracemalloc.start()
    reused = step()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < flat.nbytes / 2, f"peak {peak} B for {flat.nbytes} B of parameters"
    fresh = {}
    for lo, hi in assign_microshards(4, 2):
        for node, grad_sum, *_ in shard_gradients(net, flat, x, y, bounds, lo, hi):
            fresh[node] = grad_sum.copy()
    assert np.array_equal(reused, tree_reduce(fresh, 4))


def test_reduction_buffers_do_not_keep_their_template_alive() -> None:
    """The template may be a view of a Ray channel buffer: holding it past its step would stall the
    channel's next write, so the buffers keep only its shape and dtype."""
    template = np.ones(16, np.float32)
    buffers = ReductionBuffers(template)
    alive = weakref.ref(template)
    del template
    assert alive() is None
    assert buffers.get(0).shape == (16,) and buffers.output((0, 1)).dtype == np.float32


def test_tree_reduce_creates_no_reference_cycles():
    """Reducing leaves no garbage cycles: received arrays may pin Ray channel buffers until freed."""
    import gc

    partials = {(0, 1): np.ones(8, np.float32), (1, 3): np.ones(8, np.float32)}
    gc.collect()
    gc.disable()
    try:
        tree_reduce(partials, 3, out=np.empty(8, np.float32))
        tree_reduce({(0, 1): 1.0, (1, 3): 2.0}, 3)
        assert gc.collect() == 0
    finally:
        gc.enable()


@given(
    rates=st.lists(st.sampled_from([0.0, 0.2, 0.5]), min_size=2, max_size=2),
    batch=st.integers(1, 48),
    num_microshards=st.integers(1, 7),
    seed=st.integers(0, 2**16),
)
@settings(derandomize=True, deadline=None, max_examples=40)
def test_dropout_steps_are_bit_identical_for_any_worker_count(
    rates: list[float], batch: int, num_microshards: int, seed: int
) -> None:
    """With dropout seeded per (seed, epoch, step, micro-shard), 1..4 workers give the same bits,
    and another step key gives other masks."""
    net = Network([5, 9, 7, 3], ["relu", "gelu", "identity"], "softmax_cross_entropy", dropout=[*rates, 0.0])
    _, flat, x, y = _random_problem(
        [5, 9, 7, 3], ["relu", "gelu", "identity"], "softmax_cross_entropy", batch, seed
    )
    key = (seed, 1, 3)
    reference, loss, _ = full_batch_step_gradient(net, flat, x, y, num_microshards, key)
    for num_workers in range(1, 5):
        grad, loss_sum, _ = _distributed_step(net, flat, x, y, num_microshards, num_workers, key)
        assert np.array_equal(grad, reference) and loss_sum == loss
    if any(rates) and batch >= 8:
        other, _, _ = full_batch_step_gradient(net, flat, x, y, num_microshards, (seed, 1, 4))
        assert not np.array_equal(other, reference)
