"""Gang scheduling: reserve one CPU per worker in a placement group before any worker starts, so a job
gets all its workers or none (no half-started job holding CPUs another job needs)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group

log = logging.getLogger(__name__)

DEFAULT_STRATEGY = "SPREAD"  # across nodes where possible: a lost node takes fewer workers with it
WAIT_POLL_S = 1.0


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
) -> PlacementGroup:
    """A ready placement group with one {"CPU": 1} bundle per worker.

    Fails at once when the cluster has fewer CPUs in total than workers (unless `fail_if_too_small` is
    False: an autoscaler may add nodes), and after `wait_s` seconds without room. While it waits it calls
    `on_wait(reason)` about once a second; an exception from `on_wait` (a cancel) ends the wait.
    """
    total, _free = cluster_cpus()
    if fail_if_too_small and total < num_workers:
        raise Unplaceable(
            f"the job needs {num_workers} CPUs (one per worker) but the cluster has {total:g} in total; "
            "lower num_workers or add nodes"
        )
    group = placement_group([{"CPU": 1}] * num_workers, strategy=strategy)
    try:
        _wait_ready(group, num_workers, wait_s, on_wait)
    except BaseException:
        remove_placement_group(group)
        raise
    return group


def _wait_ready(
    group: PlacementGroup, num_workers: int, wait_s: float, on_wait: Callable[[str], None] | None
) -> None:
    ready_ref = group.ready()
    deadline = time.monotonic() + wait_s
    while not ray.wait([ready_ref], timeout=WAIT_POLL_S)[0]:
        _total, free = cluster_cpus()
        reason = f"waiting for {num_workers} CPUs for the workers; cluster has {free:g} free"
        if time.monotonic() > deadline:
            raise Unplaceable(f"no room for the workers after {wait_s:.0f} s: {reason}")
        if on_wait is not None:
            on_wait(reason)


def release(group: PlacementGroup | None) -> None:
    if group is None:
        return
    try:
        remove_placement_group(group)
    except Exception:  # the cluster may be going away; nothing else holds the reservation
        log.warning("could not remove placement group %s", group.id, exc_info=True)
