"""The fault policy of one job: how many dead actors and divergences it absorbs, and what it says.

Pure bookkeeping (no Ray), so each rule is tested on its own; the runner does the replacing.
"""

from __future__ import annotations

from dataclasses import dataclass

from gradfleet.v1 import coordinator_pb2 as pb
from service.errors import TrainingFailed
from service.wording import clause, plural
from workers.group import WorkerLost


@dataclass
class FaultPolicy:
    # Actor replacements allowed in all (spec.max_worker_restarts): each dead worker replaced counts
    # one, and so does each restart of the parameter server (with new workers) from the checkpoint.
    max_restarts: int
    rollback_on_divergence: bool
    max_rollbacks: int
    lr_factor: float  # multiplies the learning rate at each rollback
    restarts: int = 0  # worker actors replaced (Progress.worker_restarts)
    rollbacks: int = 0
    lr_scale: float = 1.0  # product of the factors of the rollbacks so far
    server_restarts: int = 0  # parameter-server restarts from the checkpoint (Progress.server_restarts)

    @classmethod
    def for_spec(cls, spec: pb.JobSpec, restarts: int = 0, server_restarts: int = 0) -> FaultPolicy:
        return cls(
            max_restarts=spec.max_worker_restarts,
            rollback_on_divergence=spec.on_divergence == pb.ROLLBACK,
            max_rollbacks=spec.max_rollbacks,
            lr_factor=spec.rollback_lr_factor,
            restarts=restarts,
            server_restarts=server_restarts,
        )

    def actor_died(
        self, what: str, step: int, epoch: int, cause: Exception, *, workers: int = 1, server: bool = False
    ) -> None:
        """Count `workers` dead worker actors about to be replaced, or with `server` one restart of the
        parameter server; WorkerLost naming `what`, the step and the cause when that would go past
        max_restarts replacements in all (nothing is counted then)."""
        used, adding = self.restarts + self.server_restarts, 1 if server else workers
        if used + adding > self.max_restarts:
            if used >= self.max_restarts:
                gave_up = f"gave up after {plural(self.max_restarts, 'replacement')} (max_worker_restarts)"
            else:  # several workers died at once, more than the replacements left
                gave_up = (
                    f"gave up: replacing {adding} actors would make {used + adding} replacements, over "
                    f"the {self.max_restarts} allowed (max_worker_restarts)"
                )
            raise WorkerLost(f"{what} died at step {step} (epoch {epoch}): {clause(cause)}; {gave_up}")
        if server:
            self.server_restarts += 1
        else:
            self.restarts += workers

    def rolls_back(self) -> bool:
        """Whether the next divergence rolls back (rather than failing the job)."""
        return self.rollback_on_divergence and self.rollbacks < self.max_rollbacks

    def diverged(self, message: str, last_good: str | None) -> float:
        """Count a rollback and return the new learning-rate scale, or raise TrainingFailed when
        rollbacks are off or used up; `last_good` names the checkpoint that stays downloadable."""
        if not self.rolls_back():
            tried = f"; tried {plural(self.rollbacks, 'rollback')}" if self.rollback_on_divergence else ""
            keep = f"; {last_good} stays downloadable" if last_good else ""
            raise TrainingFailed(f"{message}{tried}{keep}")
        self.rollbacks += 1
        self.lr_scale *= self.lr_factor
        return self.lr_scale
