"""Queues jobs and runs up to `max_running_jobs` of them at once, each on its own thread."""

from __future__ import annotations

import logging
import queue
import threading

from gradfleet.v1 import coordinator_pb2 as pb
from service.config import ServerConfig
from service.errors import LimitExceeded
from service.jobs import TERMINAL_STATES, JobStore
from service.metrics import Metrics
from service.runner import DatasetCache, JobRunner

log = logging.getLogger(__name__)


class Scheduler:
    def __init__(self, store: JobStore, metrics: Metrics, config: ServerConfig) -> None:
        self.store = store
        self.metrics = metrics
        self.config = config
        self.cache = DatasetCache(config)
        self._queue: queue.Queue[str] = queue.Queue()
        self._slots = threading.Semaphore(config.max_running_jobs)
        self._running: dict[str, JobRunner] = {}
        self._lock = threading.Lock()
        self._submit_lock = threading.Lock()
        self._stopping = threading.Event()
        self._dispatcher = threading.Thread(target=self._dispatch, name="dispatcher", daemon=True)

    def start(self) -> None:
        """Re-queue what a previous coordinator left unfinished, then start dispatching."""
        for job in self.store.unfinished():
            note = "re-queued after a coordinator restart" if job.state == pb.RUNNING else job.message
            self.store.update(job.id, lambda j, note=note: _requeue(j, note))
            self._queue.put(job.id)
        self._dispatcher.start()

    def submit(self, spec: pb.JobSpec, owner: str = "") -> pb.Job:
        """Queue a checked spec; LimitExceeded when max_queued_jobs jobs are already waiting."""
        # One lock around count, create and put: concurrent submits can neither overshoot the
        # limit nor reach the queue in another order than their records were created.
        with self._submit_lock:
            queued = self.store.counts_by_state()[pb.QUEUED]
            if queued >= self.config.max_queued_jobs:
                raise LimitExceeded(
                    f"{queued} jobs are queued, the limit is {self.config.max_queued_jobs} "
                    "(--max-queued-jobs); wait for some to finish or cancel some"
                )
            job = self.store.create(spec, owner=owner)
            self._queue.put(job.id)
        self.metrics.jobs_submitted.inc()
        return job

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
            runner.cancel_requested.set()
        return self.store.get(job_id)

    def queue_length(self) -> int:
        return self._queue.qsize()

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
                if self.store.get(job_id).state != pb.QUEUED:
                    self._slots.release()
                    continue
                runner = JobRunner(job_id, self.store, self.metrics, self.config, self.cache)
                self._running[job_id] = runner
            threading.Thread(target=self._run, args=(runner,), name=f"job-{job_id}", daemon=True).start()

    def _run(self, runner: JobRunner) -> None:
        try:
            runner.run()
        finally:
            with self._lock:
                self._running.pop(runner.job_id, None)
            self._slots.release()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop dispatching; cancel running jobs and wait for them to release their workers."""
        self._stopping.set()
        with self._lock:
            runners = list(self._running.values())
        for runner in runners:
            runner.shutting_down.set()
            runner.cancel_requested.set()
        self._dispatcher.join(timeout=2)
        for runner in runners:
            thread = next((t for t in threading.enumerate() if t.name == f"job-{runner.job_id}"), None)
            if thread is not None:
                thread.join(timeout=timeout_s)


def _requeue(job: pb.Job, note: str) -> None:
    job.state = pb.QUEUED
    job.message = note
    job.progress.Clear()


def _cancel(job: pb.Job, message: str) -> None:
    job.state = pb.CANCELLED
    job.message = message
