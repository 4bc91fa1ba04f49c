"""Writes a job's checkpoints on a background thread while training goes on (the fsync is most of
the cost): one at a time and in order, and always waited for before a checkpoint is read back."""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor

from gradfleet.v1 import coordinator_pb2 as pb
from service.checkpoints import Checkpoint, CheckpointStore
from service.job_changes import set_checkpoint
from service.jobs import JobStore
from service.metrics import Metrics

log = logging.getLogger(__name__)


class CheckpointWriter:
    """The checkpoint writes of one job; each written one shows in the job's record and metrics."""

    def __init__(self, job_id: str, checkpoints: CheckpointStore, store: JobStore, metrics: Metrics) -> None:
        self.job_id = job_id
        self.checkpoints = checkpoints
        self.store = store
        self.metrics = metrics
        self.written_step = 0  # step of the newest checkpoint on disk
        self.queued_step = 0  # step of the newest checkpoint handed to the writer
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ckpt-{job_id}")
        self._pending: Future | None = None

    def continue_from(self, step: int) -> None:
        """Training continues from the checkpoint at `step` (0: the initial weights)."""
        self.written_step = self.queued_step = step

    def queue(self, ckpt: Checkpoint) -> None:
        """Write `ckpt` in the background, after the write before it."""
        self.flush()
        self.queued_step = ckpt.step
        self._pending = self._executor.submit(self.write, ckpt)

    def write(self, ckpt: Checkpoint) -> None:
        self.checkpoints.save(ckpt)
        self.written_step = ckpt.step
        self.metrics.record_checkpoint(self.job_id)
        self.store.update(self.job_id, set_checkpoint(ckpt.step), kind=pb.JobEvent.CHECKPOINT)

    def flush(self) -> None:
        """Wait for the checkpoint being written; its errors (a full disk) surface here."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def drain(self) -> None:
        """Before the job ends: no checkpoint write may post an update after its final state."""
        try:
            self.flush()
        except Exception:
            log.warning("job %s: the last checkpoint could not be written", self.job_id, exc_info=True)

    def latest(self, spec_hash: str) -> Checkpoint | None:
        """The newest usable checkpoint on disk, once the pending write landed (CheckpointError when
        there is none although one was written: its folder was removed)."""
        self.flush()
        ckpt, skipped = self.checkpoints.latest(spec_hash, self.written_step)
        for note in skipped:
            log.warning("job %s: skipped checkpoint %s", self.job_id, note)
        return ckpt

    def close(self) -> None:
        """Wait for the write in progress and stop the thread."""
        self._executor.shutdown(wait=True)
