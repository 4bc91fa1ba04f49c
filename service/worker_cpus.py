"""The CPUs a job's workers run in, and the worker count a ScaleJob asks for: a gang reservation made
before the workers first start (the job shows QUEUED while there is no room, or while an older job
waits for CPUs) and kept across restarts and scales, plus the extra CPUs asked for, without waiting,
to scale up (once no job waits for CPUs: growing a running job goes after starting a waiting one)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from gradfleet.v1 import coordinator_pb2 as pb
from service.config import ServerConfig
from service.job_changes import scaled, set_state, show_message
from service.jobs import JobStore
from service.wording import plural
from workers.cpu_queue import CpuQueue
from workers.placement import (
    PlacementGroup,
    Reservation,
    cluster_cpus,
    is_ready,
    release,
    request_workers,
    reserve_workers,
)

START_GRACE_S = 3.0  # actors start and CPUs get placed within a second or two; longer waits are shown


class _Rescaled(Exception):
    """A ScaleJob arrived while the job waited for CPUs: wait for the new count instead."""


class ScaleRequest:
    """The worker count a ScaleJob asked for: set from an RPC thread, taken at a step boundary."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._target: int | None = None

    def set(self, num_workers: int) -> None:
        with self._lock:
            self._target = num_workers

    def get(self) -> int | None:
        with self._lock:
            return self._target

    def applied(self, target: int) -> None:
        with self._lock:
            if self._target == target:  # a newer request stays for the next boundary
                self._target = None


class WorkerCPUs:
    """One job's reservation (None until its workers first start) and its pending extra CPUs."""

    def __init__(
        self,
        job_id: str,
        store: JobStore,
        config: ServerConfig,
        scale: ScaleRequest,
        check_cancel: Callable[[], None],
        queue: CpuQueue | None = None,
    ) -> None:
        self.job_id = job_id
        self.store = store
        self.config = config
        self.scale = scale
        self.check_cancel = check_cancel
        self.queue = queue or CpuQueue()  # the coordinator's: its jobs reserve oldest first
        self.ticket = self.queue.ticket()  # made at dispatch: this job's place in line
        self.reservation: Reservation | None = None
        self._extra: PlacementGroup | None = None  # CPUs asked for to scale up, not yet granted
        self._extra_asked = 0.0  # time.monotonic() when _extra was asked for

    def reserve(self, spec: pb.JobSpec) -> Reservation:
        """The job's reservation, made first if need be (for a count ScaleJob may change meanwhile)."""
        if self.reservation is None:
            self.reservation = Reservation([self._reserve(spec)])
        return self.reservation

    def _reserve(self, spec: pb.JobSpec) -> PlacementGroup:
        """Gang-reserve the workers' CPUs, after the older jobs waiting for theirs; while there is no
        room, or an older job waits, the job shows QUEUED with the reason, and a ScaleJob meanwhile makes
        it wait for the new count instead."""
        shown = [""]  # the reason last written to the job record

        def on_wait(reason: str) -> None:
            self.check_cancel()
            if self._take_scale(spec):
                raise _Rescaled()
            if reason != shown[0]:
                self.store.update(self.job_id, set_state(pb.QUEUED, reason))
                shown[0] = reason

        while True:
            self._take_scale(spec)
            try:
                group = reserve_workers(
                    spec.num_workers,
                    self.config.worker_wait_s,
                    fail_if_too_small=not self.config.autoscaling,
                    on_wait=on_wait,
                    queue=self.queue,
                    ticket=self.ticket,
                )
                break
            except _Rescaled:
                continue
        if shown[0]:
            self.store.update(self.job_id, set_state(pb.RUNNING, "starting workers"))
        return group

    def _take_scale(self, spec: pb.JobSpec) -> bool:
        """Before the workers start: adopt a requested worker count; True when it changed."""
        target = self.scale.get()
        if target is None:
            return False
        self.scale.applied(target)
        if target == spec.num_workers:
            return False
        note = f"scaled from {spec.num_workers} to {plural(target, 'worker')} before starting"
        spec.num_workers = target
        self.store.update(self.job_id, scaled(target, note), kind=pb.JobEvent.STATE)
        return True

    def room_for(self, target: int) -> bool:
        """Whether the reservation has a CPU for each of `target` workers. If not, it asks for the
        missing ones (without waiting) and says so in the job's message; the caller tries again later."""
        missing = target - self.reservation.size
        if missing <= 0:
            self.drop_extra()
            return True
        cpus = "1 more CPU" if missing == 1 else f"{missing} more CPUs"
        if waiting := self.queue.waiters():  # Ray would place our request before theirs as often as not
            self.drop_extra()
            jobs = f"{plural(waiting, 'job')} waiting for CPUs {'goes' if waiting == 1 else 'go'} first"
            show_message(
                self.store, self.job_id, f"waiting for {cpus} to scale to {plural(target, 'worker')}; {jobs}"
            )
            return False
        if self._extra is not None and self._extra.bundle_count != missing:
            self.drop_extra()
        if self._extra is None:
            self._extra, self._extra_asked = request_workers(missing), time.monotonic()
        if is_ready(self._extra):
            self.reservation.add(self._extra)
            self._extra = None
            return True
        if time.monotonic() - self._extra_asked > START_GRACE_S:  # not just Ray placing it
            _total, free = cluster_cpus()
            note = f"waiting for {cpus} to scale to {plural(target, 'worker')}; cluster has {free:g} free"
            show_message(self.store, self.job_id, note)
        return False

    def drop_extra(self) -> None:
        release(self._extra)
        self._extra = None

    def release_if_lost(self) -> None:
        """Give the CPUs back when a slot lost its node, so a restart reserves afresh on live
        nodes instead of waiting for Ray to re-place the slot (seen to stall past minutes)."""
        if self.reservation is not None and self.reservation.lost_a_node():
            self.release()

    def release(self) -> None:
        """Give back all of the job's CPUs."""
        if self.reservation is not None:
            self.reservation.release()
            self.reservation = None
        self.drop_extra()
