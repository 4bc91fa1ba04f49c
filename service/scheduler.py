"""Queues jobs and runs up to `max_running_jobs` of them at once, each on its own thread."""

from __future__ import annotations

import logging
import queue
import threading

from gradfleet.v1 import coordinator_pb2 as pb
from service.config import ServerConfig
from service.durable import remove_temp_files
from service.errors import JobNotReady, LimitExceeded
from service.jobs import TERMINAL_STATES, JobStore
from service.jobsetup import DatasetCache
from service.metrics import Metrics
from service.runner import CANCELLED_NOTE, JobRunner
from service.wording import plural
from workers.cpu_queue import CpuQueue
from workers.placement import too_small_message, total_if_too_small

log = logging.getLogger(__name__)


class Scheduler:
    def __init__(self, store: JobStore, metrics: Metrics, config: ServerConfig) -> None:
        self.store = store
        self.metrics = metrics
        self.config = config
        self.cache = DatasetCache(config)
        self.cpu_queue = CpuQueue()  # jobs reserve CPUs in the order they are dispatched
        self._queue: queue.Queue[str] = queue.Queue()
        self._slots = threading.Semaphore(config.max_running_jobs)
        self._running: dict[str, JobRunner] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()
        self._submit_lock = threading.Lock()
        self._stopping = threading.Event()
        self._dispatcher = threading.Thread(target=self._dispatch, name="dispatcher", daemon=True)

    def start(self) -> None:
        """Re-queue what a previous coordinator left unfinished (but end what its owner had asked to
        cancel), remove the temporary files of writes it left half done, then start dispatching."""
        remove_temp_files(self.config.state_dir / "models")
        for job in self.store.unfinished():
            if self.store.cancel_requested(job.id):  # the coordinator stopped before the job did
                self.store.update(job.id, lambda j: _cancel(j, CANCELLED_NOTE))
                self.metrics.jobs_finished.labels("cancelled").inc()
                continue
            note = (
                "re-queued after a coordinator restart; it resumes from its last checkpoint"
                if job.state == pb.RUNNING
                else job.message
            )
            self.store.update(job.id, lambda j, note=note: _requeue(j, note))
            self._queue.put(job.id)
        self._dispatcher.start()

    def submit(self, spec: pb.JobSpec, owner: str = "", note: str = "") -> tuple[pb.Job, bool]:
        """Queue a checked spec, its message `note` and, when it has to wait for a running slot, why;
        returns (job, True). A retried submission (same owner and request_id) returns (the job it
        created, False).
        LimitExceeded when max_queued_jobs jobs are already waiting; JobNotReady when the cluster can
        never hold its workers (the runner checks again, for a cluster that shrank meanwhile)."""
        if (
            self.store.find_request(spec, owner) is None
        ):  # a retry gets its job whatever the cluster holds now
            total = self._total_if_never_fits(spec.num_workers)
            if total is not None:
                raise JobNotReady(f"num_workers: {too_small_message(spec.num_workers, total)}")
        # One lock around count, create and put: concurrent submits can neither overshoot the
        # limit nor reach the queue in another order than their records were created.
        with self._submit_lock:
            existing = self.store.find_request(spec, owner)
            if existing is not None:
                return existing, False
            queued = self.store.counts_by_state()[pb.QUEUED]
            if queued >= self.config.max_queued_jobs:
                raise LimitExceeded(
                    f"{queued} jobs are queued, the limit is {self.config.max_queued_jobs} "
                    "(--max-queued-jobs); wait for some to finish or cancel some"
                )
            message = "; ".join(filter(None, (note, self._slot_wait_note(queued))))
            job, created = self.store.create(spec, owner=owner, message=message)
            if created:
                self._queue.put(job.id)
        if created:
            self.metrics.jobs_submitted.inc()
        return job, created

    def _slot_wait_note(self, queued: int) -> str:
        """Why a job submitted now waits, when all --max-running-jobs slots are taken (or other jobs
        wait for them first); "" when it starts at once. Written once, at submission: keeping the
        count of jobs ahead current would rewrite every queued job each time one starts."""
        with self._lock:
            running = len(self._running)
        limit = self.config.max_running_jobs
        if running + queued < limit:  # a slot is free for each job waiting, this one included
            return ""
        ahead = f"; {plural(queued, 'job')} queued ahead of it" if queued else ""
        return f"waiting for a running slot (--max-running-jobs {limit}, {running} running{ahead})"

    def cancel(self, job_id: str) -> pb.Job:
        job = self.store.get(job_id)
        if job.state in TERMINAL_STATES:
            return job
        with self._lock:
            runner = self._running.get(job_id)
            if runner is None and job.state == pb.QUEUED:
                job = self.store.update(job_id, lambda j: _cancel(j, "cancelled while queued"))
                self.metrics.jobs_finished.labels("cancelled").inc()
                return job
        if runner is not None:
            runner.cancel()
        return self.store.get(job_id)

    def scale(self, job_id: str, num_workers: int) -> pb.Job:
        """A queued job starts with `num_workers`; a running one switches at the first step boundary
        with CPUs for them. JobNotReady when the cluster can never hold them (and cannot grow)."""
        if (total := self._total_if_never_fits(num_workers)) is not None:
            raise JobNotReady(
                f"num_workers: {plural(num_workers, 'worker')} {'needs' if num_workers == 1 else 'need'} "
                f"{plural(num_workers, 'CPU')} (one each) but the cluster "
                f"has {total:g} in total; scale to at most {total:g} workers or add nodes first"
            )
        with self._lock:
            runner = self._running.get(job_id)
            if runner is None:
                return self.store.update(
                    job_id, lambda j: _set_workers(j, num_workers), kind=pb.JobEvent.STATE
                )
        runner.request_scale(num_workers)
        return self.store.get(job_id)

    def _total_if_never_fits(self, num_workers: int) -> float | None:
        """The cluster's total CPUs when fewer than `num_workers` and it cannot grow, else None (also
        when the total is unknown: the call is bounded, and the job's reservation bounds its own wait)."""
        return None if self.config.autoscaling else total_if_too_small(num_workers)

    def runner(self, job_id: str) -> JobRunner | None:
        """The runner of a running job, or None."""
        with self._lock:
            return self._running.get(job_id)

    def queue_length(self) -> int:
        return self._queue.qsize()

    def queued_jobs(self) -> int:
        """Jobs in state QUEUED (the raw queue also holds ids of jobs cancelled while waiting)."""
        return self.store.counts_by_state().get(pb.QUEUED, 0)

    def oldest_queued_seconds(self) -> float:
        """Seconds the longest-waiting QUEUED job has been QUEUED this time (since it was submitted,
        re-queued by a restart or went back to wait for CPUs); 0 when none waits."""
        return max(self.store.seconds_in_state(pb.QUEUED), default=0.0)

    def workers_alive(self) -> int:
        """Live worker actors of the running jobs (dead ones not yet replaced do not count)."""
        with self._lock:
            return sum(runner.num_workers for runner in self._running.values())

    def _dispatch(self) -> None:
        while not self._stopping.is_set():
            try:
                job_id = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            if self.store.get(job_id).state != pb.QUEUED:
                continue  # cancelled while waiting
            while not self._slots.acquire(timeout=0.2):
                if self._stopping.is_set():
                    return
            with self._lock:
                if self._stopping.is_set():  # a slot freed by the shutdown itself: start nothing new
                    self._slots.release()
                    return
                if self.store.get(job_id).state != pb.QUEUED:
                    self._slots.release()
                    continue
                runner = JobRunner(job_id, self.store, self.metrics, self.config, self.cache, self.cpu_queue)
                self._running[job_id] = runner
                thread = threading.Thread(target=self._run, args=(runner,), name=f"job-{job_id}", daemon=True)
                self._threads[job_id] = thread
                thread.start()

    def _run(self, runner: JobRunner) -> None:
        try:
            runner.run()
        finally:
            with self._lock:
                self._running.pop(runner.job_id, None)
                self._threads.pop(runner.job_id, None)
            self._slots.release()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop dispatching; cancel running jobs and wait for them to release their workers."""
        self._stopping.set()
        self._dispatcher.join(timeout=2)  # after this no new runner starts
        with self._lock:
            runners = list(self._running.values())
            threads = list(self._threads.values())
        for runner in runners:
            runner.shutting_down.set()
            runner.cancel_requested.set()
        for thread in threads:
            thread.join(timeout=timeout_s)


def _requeue(job: pb.Job, note: str) -> None:
    job.state = pb.QUEUED
    job.message = note  # progress stays: the runner resets it to the checkpoint it resumes from


def _set_workers(job: pb.Job, num_workers: int) -> None:
    if job.state == pb.QUEUED:  # a job that ended meanwhile keeps its record as it was
        job.spec.num_workers = num_workers


def _cancel(job: pb.Job, message: str) -> None:
    job.state = pb.CANCELLED
    job.message = message
