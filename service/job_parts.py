"""The parts of a job's runner that the code acting for it between steps (service.job_faults,
service.job_scaling) works on: its actors, their CPUs, its checkpoint writes, and where it reports
(the job store and metrics)."""

from __future__ import annotations

from dataclasses import dataclass

from service.checkpoint_writer import CheckpointWriter
from service.job_actors import JobActors
from service.jobs import JobStore
from service.metrics import Metrics
from service.worker_cpus import WorkerCPUs


@dataclass
class JobParts:
    job_id: str
    store: JobStore
    metrics: Metrics
    actors: JobActors
    cpus: WorkerCPUs
    writer: CheckpointWriter
