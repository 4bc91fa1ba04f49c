"""What a running job does about a fault mid-training: dead workers are replaced and the failed step
redone, a lost parameter server (or new workers that did not start) restarts every actor from the last
checkpoint, and a divergence rolls back to it with a smaller learning rate. The fault policy
(service.recovery) counts each one and raises when the job should give up instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from gradfleet.v1 import coordinator_pb2 as pb
from service import job_changes as changes
from service.job_actors import JobSetup, ParameterServerLost
from service.job_parts import JobParts
from service.param_server import Diverged, TrainingState
from service.recovery import FaultPolicy
from service.wording import clause
from workers.group import WorkersNotStarted

log = logging.getLogger(__name__)


class JobFaults:
    """The fault handling of one job's runner. The runner keeps the job's counters: `adopt` takes
    those of the checkpoint training continues from, `progress_change` shows them all in the record.
    Each call gets the job's setup and fault policy as they are then."""

    def __init__(
        self,
        parts: JobParts,
        adopt: Callable[..., None],
        progress_change: Callable[[str], changes.JobChange],
    ) -> None:
        self.parts = parts
        self._adopt = adopt
        self._progress_change = progress_change

    def handle(self, failure: Exception, failed_step: int, setup: JobSetup, policy: FaultPolicy) -> None:
        """A failure the parameter server reported with its training steps."""
        if isinstance(failure, Diverged):
            self.rollback(failure, setup, policy)
        else:
            self.replace_workers(failure, failed_step, setup, policy)

    def replace_workers(
        self, cause: Exception, failed_step: int, setup: JobSetup, policy: FaultPolicy
    ) -> None:
        """Replace dead workers; the failed step is redone from the same parameters."""
        actors = self.parts.actors
        actors.ps_call("close")  # frees the live workers from the broken graph
        dead = actors.dead_workers()
        names = ", ".join(f"worker {r} (pid {actors.group.pids[r]})" for r in dead)
        self._count(policy, setup, names, failed_step, cause, workers=len(dead))
        actors.replace(  # a retry starts a new actor for each of `dead` again: they all count
            dead,
            f"{names} died at step {failed_step}",
            on_retry=lambda again: self._count(policy, setup, names, failed_step, again, workers=len(dead)),
        )
        note = f"{names} died at step {failed_step}: {clause(cause)}; replaced, the step is redone"
        self._announce(note, changes.recovered(note, policy.restarts), pb.JobEvent.RECOVERED)

    def restart_from_checkpoint(
        self, cause: Exception, failed_step: int, setup: JobSetup, policy: FaultPolicy
    ) -> None:
        """The parameter server is gone, or new workers did not start: new actors from the last
        checkpoint, in the CPUs the job already holds."""
        actors, cpus = self.parts.actors, self.parts.cpus
        while True:
            what = "the parameter server" if isinstance(cause, ParameterServerLost) else "the new workers"
            self._count(policy, setup, what, failed_step, cause, server=True)
            actors.stop()
            cpus.release_if_lost()
            ckpt = self.parts.writer.latest(setup.spec_hash)
            self._adopt(ckpt)
            try:
                actors.start(setup, ckpt, cpus)
                break
            except WorkersNotStarted as exc:
                cause = exc
        note = (
            f"{what} died at step {failed_step}: {clause(cause)}; "
            f"restarted from {'the checkpoint at step ' + str(ckpt.step) if ckpt else 'the initial weights'}"
        )
        self._announce(note, self._progress_change(note), pb.JobEvent.RECOVERED)

    def rollback(self, diverged: Diverged, setup: JobSetup, policy: FaultPolicy) -> None:
        """Continue from the last checkpoint with a smaller learning rate, or fail naming the divergence."""
        writer = self.parts.writer
        self.parts.metrics.record_divergence(
            self.parts.job_id, diverged.loss
        )  # for the loss-not-finite alert
        # Decided before any checkpoint is read: failing names the divergence, whatever they hold.
        writer.drain()
        last = writer.written_step
        scale = policy.diverged(diverged.message, f"the checkpoint at step {last}" if last else None)
        ckpt = writer.latest(setup.spec_hash)
        where = f"the checkpoint at step {ckpt.step}" if ckpt else "the initial weights"
        rollbacks = policy.rollbacks
        if ckpt is None:
            state = TrainingState(0, setup.initial_params(), {}, scale)
        else:
            state = TrainingState(ckpt.step, ckpt.params, ckpt.optimizer, scale)
        self.parts.actors.ps_call("restore", state)
        self._adopt(ckpt, keep_policy=True)
        self.parts.metrics.divergence_rollbacks.inc()
        note = (
            f"{diverged.message}; rolled back to {where} with the learning rate scaled by {scale:.3g} "
            f"(rollback {rollbacks} of {setup.spec.max_rollbacks})"
        )
        self._announce(note, self._progress_change(note), pb.JobEvent.ROLLBACK)

    def _count(
        self,
        policy: FaultPolicy,
        setup: JobSetup,
        what: str,
        failed_step: int,
        cause: Exception,
        *,
        workers: int = 0,
        server: bool = False,
    ) -> None:
        """Count `workers` worker replacements or (`server`) one parameter-server restart, in the
        policy (which may give up) and in the matching metric, so Progress and /metrics agree."""
        policy.actor_died(
            what, failed_step, setup.epoch_of(failed_step), cause, workers=workers, server=server
        )
        if server:
            self.parts.metrics.server_restarts.inc()
        else:
            self.parts.metrics.worker_replacements.inc(workers)

    def _announce(self, note: str, change: changes.JobChange, kind: int) -> None:
        log.warning("job %s: %s", self.parts.job_id, note)
        self.parts.store.update(self.parts.job_id, change, kind=kind)
