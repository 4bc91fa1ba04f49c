"""Scaling a running job: at a step boundary with CPUs for the new worker count, its live state is
written as a checkpoint (a shutdown right after resumes from there) and new actors continue from it;
fixed micro-shards keep the results the same. Until there is room, training goes on with the old
workers. (A job still waiting for its first CPUs takes the new count in service.worker_cpus.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from gradfleet.v1 import coordinator_pb2 as pb
from service import job_changes as changes
from service.checkpoints import Checkpoint
from service.job_actors import JobSetup
from service.job_parts import JobParts
from service.param_server import TrainingState
from service.wording import idle_workers_note, plural
from service.worker_cpus import ScaleRequest

log = logging.getLogger(__name__)


class JobScaling:
    """The ScaleJob requests of one job's runner, applied between its steps; `checkpoint_of` gives the
    parameter server's state with the runner's counters."""

    def __init__(
        self, parts: JobParts, request: ScaleRequest, checkpoint_of: Callable[[TrainingState], Checkpoint]
    ) -> None:
        self.parts = parts
        self.request = request
        self.checkpoint_of = checkpoint_of

    def scale_if_asked(self, setup: JobSetup, train_call_ahead: bool) -> None:
        """Switch to the asked worker count if the reservation has room for it; `train_call_ahead`: a
        train call sent ahead is still out, so the switch waits for it (none goes ahead while a scale
        waits)."""
        parts, cpus, actors = self.parts, self.parts.cpus, self.parts.actors
        target, before = self.request.get(), setup.spec.num_workers
        if target is None or target == before:
            cpus.drop_extra()
            if target is not None:
                self.request.applied(target)
            return
        if train_call_ahead or not cpus.room_for(target):
            return
        ckpt = self.checkpoint_of(actors.ps_call("state"))
        if ckpt.step != parts.writer.queued_step:
            parts.writer.queue(ckpt)
        actors.stop()
        cpus.reservation.shrink_to(target)
        setup.spec.num_workers = target
        self.request.applied(target)
        note = f"scaled from {before} to {plural(target, 'worker')} at step {ckpt.step}"
        if idle := idle_workers_note(target, setup.spec.micro_shards, setup.spec.batch_size):
            note += f"; {idle}"
        log.info("job %s: %s", parts.job_id, note)
        parts.store.update(parts.job_id, changes.scaled(target, note), kind=pb.JobEvent.STATE)
        # WorkersNotStarted from here: the job restarts from that checkpoint, with `target` workers.
        actors.start(setup, ckpt, cpus)
        changes.show_message(parts.store, parts.job_id, note)  # over a "waiting for CPUs" shown meanwhile
        parts.metrics.set_job_workers(parts.job_id, target)
