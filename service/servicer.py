"""The Coordinator gRPC servicer: translates protobuf requests to calls on the scheduler and job store.

No business logic here; errors are domain exceptions that the interceptor maps to status codes.
A caller sees only its own jobs (an admin, or everyone when auth is off, sees all); another
principal's job is answered NOT_FOUND, so job ids cannot be probed.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from typing import BinaryIO

from gradfleet.v1 import coordinator_pb2 as pb
from gradfleet.v1 import coordinator_pb2_grpc as pb_grpc
from service.admission import Admission
from service.auth import principal_of
from service.checkpoints import downloadable_model
from service.client import EXISTING_JOB_METADATA
from service.config import ServerConfig
from service.errors import InvalidSpec, JobNotFound, JobNotReady, Unavailable
from service.jobs import TERMINAL_STATES, JobStore, now_timestamp
from service.runner import JobRunner
from service.scheduler import Scheduler
from service.spec_validation import workers_allowed

log = logging.getLogger(__name__)

WATCH_POLL_S = 1.0  # how often an idle watch stream checks that its client is still there
# A stream sends PROGRESS at most once every WATCH_BATCH_S, leaving out those a later event supersedes
# (each event carries the whole job): a training job publishes 4-5 events a second, and 50 streams
# woken for each of them took 40% more of the coordinator's CPU. Any other event (EVAL, CHECKPOINT,
# STATE) goes out at once, with the PROGRESS gathered before it.
WATCH_BATCH_S = 1.0


class CoordinatorServicer(pb_grpc.CoordinatorServicer):
    def __init__(
        self,
        store: JobStore,
        scheduler: Scheduler,
        config: ServerConfig,
        admission: Admission,
    ) -> None:
        self.store = store
        self.scheduler = scheduler
        self.config = config
        self.admission = admission
        self.stopping = threading.Event()

    def SubmitJob(self, request: pb.JobSpec, context) -> pb.Job:
        if self.stopping.is_set():  # calls that got in before the gRPC server closed
            raise Unavailable(
                "the coordinator is shutting down and takes no new jobs; submit again once it is back"
            )
        spec, note = self.admission.check(request)
        job, created = self.scheduler.submit(spec, owner=principal_of(context).name, note=note)
        if not created:  # the client cannot tell a repeated request id's job from a new one by itself
            context.set_trailing_metadata(((EXISTING_JOB_METADATA, "true"),))
        return job

    def GetJob(self, request: pb.GetJobRequest, context) -> pb.Job:
        return self._visible_job(request.job_id, context)

    def ListJobs(self, request: pb.ListJobsRequest, context) -> pb.ListJobsResponse:
        principal = principal_of(context)
        owner = None if principal.admin else principal.name
        jobs, token = self.store.list(request.state, request.page_size, request.page_token, owner=owner)
        return pb.ListJobsResponse(jobs=jobs, next_page_token=token)

    def CancelJob(self, request: pb.CancelJobRequest, context) -> pb.Job:
        self._visible_job(request.job_id, context)
        return self.scheduler.cancel(request.job_id)

    def ScaleJob(self, request: pb.ScaleJobRequest, context) -> pb.Job:
        job = self._visible_job(request.job_id, context)
        limit = self.config.max_workers_per_job
        if not 1 <= request.num_workers <= limit:
            raise InvalidSpec("num_workers", f"got {request.num_workers}; {workers_allowed(limit)}")
        if job.state in TERMINAL_STATES:
            raise JobNotReady(
                f"job {job.id} is {pb.JobState.Name(job.state)}; only queued or running jobs can be scaled"
            )
        return self.scheduler.scale(request.job_id, request.num_workers)

    def WatchJob(self, request: pb.WatchJobRequest, context):
        self._visible_job(request.job_id, context)
        yield from self._watch(request.job_id, context)  # its place among streams: service/limits.py

    def _watch(self, job_id: str, context):
        version, job = self.store.snapshot(job_id)
        yield pb.JobEvent(kind=pb.JobEvent.STATE, job=job, time=now_timestamp())
        if job.state in TERMINAL_STATES:
            return
        # A client that goes away wakes us at once, so its thread is freed, not held to the next event.
        context.add_callback(self.store.wake_all)
        while context.is_active() and not self.stopping.is_set():
            events = self.store.events_after(job_id, version, WATCH_POLL_S)
            if not events:
                continue
            version = events[-1][0]
            for event in without_superseded_progress(events):
                yield event
                if event.kind == pb.JobEvent.STATE and event.job.state in TERMINAL_STATES:
                    return
            self.store.wait_for_milestone(job_id, version, WATCH_BATCH_S)

    def DownloadModel(self, request: pb.DownloadModelRequest, context):
        job = self._visible_job(request.job_id, context)
        final = JobRunner.model_path(self.config, job.id)
        with downloadable_model(self.config.state_dir, final, job) as model:
            yield from file_chunks(model, self.config.download_chunk_bytes)

    def _visible_job(self, job_id: str, context) -> pb.Job:
        job = self.store.get(job_id)
        if not principal_of(context).can_see(job.owner):
            raise JobNotFound(job_id)
        return job


def file_chunks(model: BinaryIO, chunk_bytes: int) -> Iterator[pb.Chunk]:
    """The open file from its start, read a chunk of at most `chunk_bytes` at a time as it is sent."""
    total, offset = os.fstat(model.fileno()).st_size, 0
    while offset < total:
        data = model.read(min(chunk_bytes, total - offset))
        if not data:  # files are replaced by rename, never cut short: only outside meddling does this
            raise Unavailable(f"the model file shrank to {offset} of {total} bytes while being sent; retry")
        yield pb.Chunk(data=data, offset=offset, total_size=total)
        offset += len(data)


def without_superseded_progress(events: list[tuple[int, pb.JobEvent]]) -> list[pb.JobEvent]:
    """The events in order, less each PROGRESS event that a later one follows (its job is newer)."""
    last = len(events) - 1
    return [e for i, (_, e) in enumerate(events) if e.kind != pb.JobEvent.PROGRESS or i == last]
