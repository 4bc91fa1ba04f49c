"""Micro-shards and a deterministic tree reduction of their gradient sums.

A global batch is cut into a FIXED number ``M`` of micro-shards, whatever the number of workers.
Sums are combined along ONE fixed binary tree over micro-shard indices ``[0, M)``: node
``[lo, hi)`` has children ``[lo, mid)`` and ``[mid, hi)`` with ``mid = (lo + hi) // 2``; leaves
are single micro-shards, and a node's sum is always ``sum(left) + sum(right)``. A worker owning
the micro-shards ``[lo, hi)`` returns the sums of the maximal tree nodes inside its range; the
parameter server completes the tree. Because every float addition happens in the same tree
order, the root sum is bit-identical for any number of workers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import numpy as np

from .network import Network

Node = tuple[int, int]
NodeResult = tuple[Node, np.ndarray, float, int, int]
Summable = TypeVar("Summable", np.ndarray, float, int)
# Fills ``out`` with a node's sum and returns its statistics, or returns None to split the node.
_NodeFetcher = Callable[[Node, np.ndarray], "tuple | None"]


def microshard_bounds(batch_size: int, num_microshards: int) -> list[tuple[int, int]]:
    """Row ranges ``(start, end)`` of the ``M`` micro-shards of a batch, in order.

    Sizes differ by at most 1 (the first ``batch_size % M`` are one larger); when
    ``batch_size < M`` the last ones are empty (``start == end``).
    """
    return _balanced_ranges(batch_size, num_microshards, "batch_size", "num_microshards")


def assign_microshards(num_microshards: int, num_workers: int) -> list[tuple[int, int]]:
    """Contiguous balanced ranges ``(lo, hi)`` of micro-shard indices, one per worker.

    Sizes differ by at most 1; workers beyond ``num_microshards`` get empty ranges (``lo == hi``).
    """
    return _balanced_ranges(num_microshards, num_workers, "num_microshards", "num_workers")


def tree_nodes(lo: int, hi: int, num_microshards: int) -> list[Node]:
    """The maximal nodes of the fixed tree over ``[0, num_microshards)`` lying inside ``[lo, hi)``,
    left to right; empty for an empty range."""
    if num_microshards < 1 or not 0 <= lo <= hi <= num_microshards:
        raise ValueError(f"Invalid micro-shard range [{lo}, {hi}) for {num_microshards} micro-shards")
    found: list[Node] = []

    def visit(node: Node) -> None:
        if node[1] <= lo or node[0] >= hi:
            return
        if lo <= node[0] and node[1] <= hi:
            found.append(node)
            return
        for child in _children(node):
            visit(child)

    visit((0, num_microshards))
    return found


def tree_reduce(
    partials: Mapping[Node, Summable],
    num_microshards: int,
    *,
    out: np.ndarray | None = None,
    buffers: ReductionBuffers | None = None,
) -> Summable:
    """Combine node partial sums into the sum of the root ``[0, M)`` along the fixed tree.

    ``partials`` maps tree nodes to arrays (all of one shape and dtype; the sum goes into ``out``
    if given, else a new array, and the inputs are never written) or to Python numbers (loss
    sums, counts; ``out`` unused). ``out`` must not be one of the partials. ``buffers`` (kept by
    the caller across calls) holds the inner nodes' sums, so a steady-state call allocates nothing.
    Raises ``ValueError`` naming the first node not covered, or a key that is not a needed tree node.
    """
    _check_coverage(partials, num_microshards)
    root = (0, num_microshards)
    first = next(iter(partials.values()))
    if not isinstance(first, np.ndarray):
        return _reduce_numbers(root, partials)
    if out is None:
        out = np.empty_like(first)
    if root in partials:
        np.copyto(out, partials[root])
        return out
    _sum_partials_into(root, out, partials, buffers or ReductionBuffers(out), depth=0)
    return out


def shard_gradients(
    net: Network,
    flat: np.ndarray,
    x_batch: np.ndarray,
    y_batch: np.ndarray,
    bounds: list[tuple[int, int]],
    lo: int,
    hi: int,
    buffers: ReductionBuffers | None = None,
    dropout_key: Sequence[int] | None = None,
) -> list[NodeResult]:
    """A worker's share of a step: one ``(node, grad_sum, loss_sum, correct_count, sample_count)``
    per node of ``tree_nodes(lo, hi, M)`` with ``M = len(bounds)``.

    Each leaf micro-shard's gradient SUM is computed by its own ``loss_and_grad`` call, so the
    numbers never depend on how micro-shards are grouped; leaves are then added along the tree.
    ``bounds[i]`` are the rows of micro-shard ``i`` within ``x_batch``/``y_batch``; only those of
    ``[lo, hi)`` are read, so a worker may pass just its own rows with shifted bounds.
    ``buffers`` (made for ``flat``, kept by the caller) supplies the node sums and temporary space,
    so steady-state calls allocate nothing parameter-sized; the returned arrays are then those
    buffers, overwritten by the next call with the same ``buffers``.
    ``dropout_key`` (e.g. ``(seed, epoch, batch_index)``) turns dropout on: micro-shard ``i`` draws
    its masks from ``default_rng([*dropout_key, i])``, so they never depend on the worker count.
    """
    _check_shard_rows(bounds, lo, hi, len(x_batch), len(y_batch))

    def compute_leaf(node: Node, target: np.ndarray) -> tuple | None:
        if node[1] - node[0] != 1:
            return None
        start, end = bounds[node[0]]
        rows = slice(start, end)
        rng = None
        if dropout_key is not None and net.has_dropout:
            rng = np.random.default_rng([*dropout_key, node[0]])
        loss, correct = net.loss_grad_and_correct(flat, x_batch[rows], y_batch[rows], target, rng)
        return (loss, correct, end - start)

    buffers = buffers or ReductionBuffers(flat)
    results = []
    for node in tree_nodes(lo, hi, len(bounds)):
        grad_sum = buffers.output(node)
        loss, correct, count = _reduce_into(node, grad_sum, compute_leaf, buffers, depth=0)
        results.append((node, grad_sum, loss, correct, count))
    return results


def full_batch_step_gradient(
    net: Network,
    flat: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    num_microshards: int,
    dropout_key: Sequence[int] | None = None,
) -> tuple[np.ndarray, float, int]:
    """Single-process reference: ``(grad_sum, loss_sum, sample_count)`` of the whole batch, reduced
    along the same tree as a distributed step (all micro-shards on one worker)."""
    bounds = microshard_bounds(len(x), num_microshards)
    [(_, grad_sum, loss_sum, _, count)] = shard_gradients(
        net, flat, x, y, bounds, 0, num_microshards, dropout_key=dropout_key
    )
    return grad_sum, loss_sum, count


def _check_shard_rows(
    bounds: list[tuple[int, int]], lo: int, hi: int, num_x_rows: int, num_y_rows: int
) -> None:
    if num_x_rows != num_y_rows:
        raise ValueError(f"x_batch has {num_x_rows} rows but y_batch has {num_y_rows}")
    for index in range(lo, min(hi, len(bounds))):
        start, end = bounds[index]
        if not 0 <= start <= end <= num_x_rows:
            raise ValueError(
                f"micro-shard {index} rows [{start}, {end}) lie outside the {num_x_rows} given rows"
            )


class ReductionBuffers:
    """Arrays shaped like ``template`` reused across steps: one sum per tree node a caller returns,
    one temporary per tree depth, each allocated on first use. Keeps only the shape and dtype:
    ``template`` may be a view of a Ray channel buffer, which must not outlive its step (the
    channel's next write waits until it is released)."""

    def __init__(self, template: np.ndarray) -> None:
        self._shape, self._dtype = template.shape, template.dtype
        self._outputs: dict[Node, np.ndarray] = {}
        self._scratch: list[np.ndarray] = []

    def output(self, node: Node) -> np.ndarray:
        if node not in self._outputs:
            self._outputs[node] = np.empty(self._shape, self._dtype)
        return self._outputs[node]

    def fits(self, array: np.ndarray) -> bool:
        return array.shape == self._shape and array.dtype == self._dtype

    def get(self, depth: int) -> np.ndarray:
        while len(self._scratch) <= depth:
            self._scratch.append(np.empty(self._shape, self._dtype))
        return self._scratch[depth]


def _reduce_into(
    node: Node, out: np.ndarray, fetch: _NodeFetcher, pool: ReductionBuffers, depth: int
) -> tuple:
    """Write the sum of ``node`` into ``out`` as ``sum(left) + sum(right)``, recursively; return
    the element-wise sum of the statistics tuples ``fetch`` gave, added in the same order."""
    stats = fetch(node, out)
    if stats is not None:
        return stats
    left, right = _children(node)
    left_stats = _reduce_into(left, out, fetch, pool, depth + 1)
    right_sum = pool.get(depth)
    right_stats = _reduce_into(right, right_sum, fetch, pool, depth + 1)
    out += right_sum
    return tuple(a + b for a, b in zip(left_stats, right_stats, strict=True))


def _sum_partials_into(
    node: Node, out: np.ndarray, partials: Mapping[Node, np.ndarray], pool: ReductionBuffers, depth: int
) -> None:
    """``out = sum(left) + sum(right)`` for an inner ``node``, reading partials in place (no copies)."""
    left, right = _children(node)
    if left in partials:
        left_sum = partials[left]
    else:
        _sum_partials_into(left, out, partials, pool, depth + 1)
        left_sum = out
    if right in partials:
        right_sum = partials[right]
    else:
        right_sum = pool.get(depth)
        _sum_partials_into(right, right_sum, partials, pool, depth + 1)
    np.add(left_sum, right_sum, out=out)


def _reduce_numbers(node: Node, partials: Mapping[Node, Summable]) -> Summable:
    if node in partials:
        return partials[node]
    left, right = _children(node)
    return _reduce_numbers(left, partials) + _reduce_numbers(right, partials)


def _check_coverage(partials: Mapping[Node, object], num_microshards: int) -> None:
    """Raise ``ValueError`` unless the keys are exactly a cover of ``[0, M)`` by tree nodes."""
    if num_microshards < 1:
        raise ValueError(f"Invalid num_microshards: {num_microshards}")
    used: set[Node] = set()
    _visit_cover((0, num_microshards), partials, used)
    unused = [node for node in partials if node not in used]
    if unused:
        raise ValueError(f"partial sums for nodes that are not needed tree nodes: {unused}")


def _visit_cover(node: Node, partials: Mapping[Node, object], used: set[Node]) -> None:
    # A module-level function, not a closure: a recursive closure is a reference cycle that would
    # keep `partials` (arrays that may pin Ray channel buffers) alive until the cyclic GC runs.
    if node in partials:
        used.add(node)
    elif node[1] - node[0] == 1:
        raise ValueError(f"missing partial sum for micro-shard node {node}")
    else:
        for child in _children(node):
            _visit_cover(child, partials, used)


def _children(node: Node) -> tuple[Node, Node]:
    lo, hi = node
    mid = (lo + hi) // 2
    return (lo, mid), (mid, hi)


def _balanced_ranges(total: int, parts: int, total_name: str, parts_name: str) -> list[tuple[int, int]]:
    if total < 0 or parts < 1:
        raise ValueError(f"Invalid {total_name}={total} or {parts_name}={parts}")
    base, extra = divmod(total, parts)
    ranges = []
    start = 0
    for index in range(parts):
        end = start + base + (1 if index < extra else 0)
        ranges.append((start, end))
        start = end
    return ranges
