"""Gang scheduling: reserve one CPU per worker in a placement group before any worker starts, so a job
gets all its workers or none (no half-started job holding CPUs another job needs). A job that scales
up asks for the extra CPUs in a second placement group while it keeps training, and only then
switches: its `Reservation` may span several groups."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

import ray
from ray.util import placement_group_table
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from workers.cpu_queue import CpuQueue

log = logging.getLogger(__name__)

DEFAULT_STRATEGY = "SPREAD"  # across nodes where possible: a lost node takes fewer workers with it
WAIT_POLL_S = 1.0
ROOM_GRACE_S = 5.0  # past the deadline, while the CPUs show as free: Ray may be placing the group
TOTAL_CPUS_TIMEOUT_S = 2.0  # the GCS answers in milliseconds; one that does not is unreachable or restarting


class Unplaceable(RuntimeError):
    """The job's workers cannot be placed on the cluster; the message says why and what to change."""


def cluster_cpus() -> tuple[float, float]:
    """(total, free) CPUs of the Ray cluster right now."""
    return ray.cluster_resources().get("CPU", 0.0), ray.available_resources().get("CPU", 0.0)


def reserve_workers(
    num_workers: int,
    wait_s: float,
    *,
    fail_if_too_small: bool = True,
    strategy: str = DEFAULT_STRATEGY,
    on_wait: Callable[[str], None] | None = None,
    queue: CpuQueue | None = None,
    ticket: int = 0,
) -> PlacementGroup:
    """A ready placement group with one {"CPU": 1} bundle per worker, asked of Ray only while no job
    older than `ticket` waits in `queue` (see workers.cpu_queue; without a queue, at once).

    Fails at once when the cluster has fewer CPUs in total than workers (unless `fail_if_too_small` is
    False: an autoscaler may add nodes), and after `wait_s` seconds without room, the time in line
    included. While it waits it calls `on_wait(reason)` about once a second; an exception from
    `on_wait` (a cancel) ends the wait.
    """
    if fail_if_too_small and (total := total_if_too_small(num_workers)) is not None:
        raise Unplaceable(too_small_message(num_workers, total))
    queue = queue or CpuQueue()
    with queue.waiting(ticket):
        return _reserve_in_turn(num_workers, wait_s, strategy, on_wait, queue, ticket)


def _reserve_in_turn(
    num_workers: int,
    wait_s: float,
    strategy: str,
    on_wait: Callable[[str], None] | None,
    queue: CpuQueue,
    ticket: int,
) -> PlacementGroup:
    deadline = time.monotonic() + wait_s
    group: PlacementGroup | None = None
    try:
        while True:
            ahead = queue.ahead_of(ticket, wait_s=0.0 if group is not None else WAIT_POLL_S)
            if ahead and group is not None:  # an older job came to wait: it asks Ray first
                release(group)
                group = None
            if not ahead and group is None:
                group = request_workers(num_workers, strategy)
                placed = group.ready()
            if group is not None and ray.wait([placed], timeout=WAIT_POLL_S)[0]:
                return group
            reason, room = _wait_reason(num_workers, ahead)
            # CPUs that show as free are Ray placing the group (within a second): no reason to fail.
            if time.monotonic() > deadline + (ROOM_GRACE_S if room else 0.0):
                raise Unplaceable(f"no room for the workers after {wait_s:.0f} s: {reason}")
            if on_wait is not None:
                on_wait(reason)
    except BaseException:
        release(group)
        raise


def _wait_reason(num_workers: int, ahead: int) -> tuple[str, bool]:
    """What a reservation waits for, and whether the cluster shows the CPUs as free."""
    what = f"waiting for {num_workers} CPUs for the workers"
    if ahead:
        return f"{what}; {ahead} older {'job waits' if ahead == 1 else 'jobs wait'} for CPUs first", False
    _total, free = cluster_cpus()
    if free >= num_workers:
        return f"{what}; {free:g} show as free but Ray has not placed them yet", True
    return f"{what}; cluster has {free:g} free", False


def total_if_too_small(num_workers: int, timeout_s: float = TOTAL_CPUS_TIMEOUT_S) -> float | None:
    """The cluster's total CPUs when they are fewer than `num_workers` (one each), else None.

    Also None when Ray does not say within `timeout_s` (GCS unreachable, Ray not started, no node
    reported yet): RPC threads call this, and the reservation's own wait bounds a job let through.
    """
    total = _total_cpus(timeout_s)
    return total if total is not None and total < num_workers else None


def too_small_message(num_workers: int, total: float) -> str:
    """Why a job of `num_workers` can never run on a cluster of `total` CPUs, and what to do."""
    return (
        f"the job needs {num_workers} CPUs (one per worker) but the cluster has {total:g} in total; "
        "lower num_workers or add nodes"
    )


_total_lock = threading.Lock()
_total_query: Future | None = None  # the query in flight, shared: a hung GCS holds one thread, not one a call


def _total_cpus(timeout_s: float) -> float | None:
    global _total_query
    with _total_lock:
        if _total_query is None or _total_query.done():
            _total_query = Future()
            threading.Thread(target=_ask_total, args=(_total_query,), name="total-cpus", daemon=True).start()
        query = _total_query
    try:
        return query.result(timeout=timeout_s)
    except Exception as exc:  # TimeoutError, or Ray's own error
        log.warning("the cluster's total CPUs are unknown (%r); worker counts are not checked", exc)
        return None


def _ask_total(query: Future) -> None:
    try:
        resources = ray.cluster_resources()
        # No resource at all: no node has reported yet (a live node always has memory), so unknown.
        query.set_result(resources.get("CPU", 0.0) if resources else None)
    except Exception as exc:
        query.set_exception(exc)


def wait_all(refs: list, timeout_s: float, on_poll: Callable[[bool], None]) -> None:
    """Return once every ref is ready; meanwhile call `on_poll(timed_out)` about every WAIT_POLL_S,
    `timed_out` True once `timeout_s` passed (it should raise then)."""
    deadline = time.monotonic() + timeout_s
    while len(ray.wait(refs, num_returns=len(refs), timeout=WAIT_POLL_S)[0]) < len(refs):
        on_poll(time.monotonic() > deadline)


def request_workers(num_workers: int, strategy: str = DEFAULT_STRATEGY) -> PlacementGroup:
    """Ask for `num_workers` one-CPU bundles without waiting; `is_ready` says when they are held."""
    return placement_group([{"CPU": 1}] * num_workers, strategy=strategy)


def is_ready(group: PlacementGroup) -> bool:
    return bool(ray.wait([group.ready()], timeout=0)[0])


class Reservation:
    """The CPUs held for a job's workers: ready placement groups whose bundles, in order, are the
    slots of ranks 0, 1, ...; it may hold more slots than workers (after a scale down)."""

    def __init__(self, groups: list[PlacementGroup]) -> None:
        self.groups = list(groups)

    @property
    def size(self) -> int:
        """How many workers it has room for."""
        return sum(group.bundle_count for group in self.groups)

    def slot(self, rank: int) -> PlacementGroupSchedulingStrategy:
        """Where worker `rank` runs."""
        for group in self.groups:
            if rank < group.bundle_count:
                return PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=rank)
            rank -= group.bundle_count
        raise IndexError(f"rank {rank} is beyond the {self.size} reserved CPUs")

    def add(self, group: PlacementGroup) -> None:
        """Take a ready group's bundles as the next slots."""
        self.groups.append(group)

    def shrink_to(self, num_workers: int) -> None:
        """Give back the groups that only hold slots of ranks >= `num_workers`."""
        kept, first = [], 0
        for group in self.groups:
            if first < num_workers:
                kept.append(group)
            else:
                release(group)
            first += group.bundle_count
        self.groups = kept

    def nodes(self) -> list[str]:
        """The node id of each slot (for tests and logs)."""
        table = [placement_group_table(group)["bundles_to_node_id"] for group in self.groups]
        return [nodes[i] for nodes in table for i in sorted(nodes)]

    def lost_a_node(self) -> bool:
        """Whether a slot is not on a live node (its node died; Ray may be re-placing it)."""
        alive = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
        for group in self.groups:
            table = placement_group_table(group)
            placed = table["bundles_to_node_id"]
            if len(placed) < len(table["bundles"]) or any(n not in alive for n in placed.values()):
                return True
        return False

    def release(self) -> None:
        for group in self.groups:
            release(group)
        self.groups = []


def release(group: PlacementGroup | None) -> None:
    if group is None:
        return
    try:
        remove_placement_group(group)
    except Exception:  # the cluster may be going away; nothing else holds the reservation
        log.warning("could not remove placement group %s", group.id, exc_info=True)
