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
    max_restarts: int  # actor replacements allowed in all (spec.max_worker_restarts)
    rollback_on_divergence: bool
    max_rollbacks: int
    lr_factor: float  # multiplies the learning rate at each rollback
    restarts: int = 0
    rollbacks: int = 0
    lr_scale: float = 1.0  # product of the factors of the rollbacks so far

    @classmethod
    def for_spec(cls, spec: pb.JobSpec, restarts: int = 0) -> FaultPolicy:
        return cls(
            max_restarts=spec.max_worker_restarts,
            rollback_on_divergence=spec.on_divergence == pb.ROLLBACK,
            max_rollbacks=spec.max_rollbacks,
            lr_factor=spec.rollback_lr_factor,
            restarts=restarts,
        )

    def actor_died(self, what: str, step: int, epoch: int, cause: Exception) -> None:
        """Count one replacement of `what`; WorkerLost naming it, the step and the cause past the limit."""
        self.restarts += 1
        if self.restarts > self.max_restarts:
            raise WorkerLost(
                f"{what} died at step {step} (epoch {epoch}): {clause(cause)}; "
                f"gave up after {plural(self.max_restarts, 'replacement')} (max_worker_restarts)"
            )

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
