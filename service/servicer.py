"""The Coordinator gRPC servicer: translates protobuf requests to calls on the scheduler and job store.

No business logic here; errors are domain exceptions that the interceptor maps to status codes.
"""

from __future__ import annotations

import logging
import threading

from gradfleet.v1 import coordinator_pb2 as pb
from gradfleet.v1 import coordinator_pb2_grpc as pb_grpc
from service.checkpoints import downloadable_model
from service.config import DOWNLOAD_CHUNK_BYTES, ServerConfig
from service.jobs import TERMINAL_STATES, JobStore, now_timestamp
from service.runner import JobRunner
from service.scheduler import Scheduler
from service.spec import validate_spec, with_defaults

log = logging.getLogger(__name__)

WATCH_POLL_S = 1.0  # how often an idle watch stream checks that its client is still there


class CoordinatorServicer(pb_grpc.CoordinatorServicer):
    def __init__(self, store: JobStore, scheduler: Scheduler, config: ServerConfig) -> None:
        self.store = store
        self.scheduler = scheduler
        self.config = config
        self.stopping = threading.Event()

    def SubmitJob(self, request: pb.JobSpec, context) -> pb.Job:
        spec = with_defaults(request)
        validate_spec(spec, max_workers=self.config.max_workers_per_job, max_params=self.config.max_params)
        return self.scheduler.submit(spec)

    def GetJob(self, request: pb.GetJobRequest, context) -> pb.Job:
        return self.store.get(request.job_id)

    def ListJobs(self, request: pb.ListJobsRequest, context) -> pb.ListJobsResponse:
        jobs, token = self.store.list(request.state, request.page_size, request.page_token)
        return pb.ListJobsResponse(jobs=jobs, next_page_token=token)

    def CancelJob(self, request: pb.CancelJobRequest, context) -> pb.Job:
        return self.scheduler.cancel(request.job_id)

    def WatchJob(self, request: pb.WatchJobRequest, context):
        version, job = self.store.snapshot(request.job_id)
        yield pb.JobEvent(kind=pb.JobEvent.STATE, job=job, time=now_timestamp())
        if job.state in TERMINAL_STATES:
            return
        # A client that goes away wakes us at once, so its thread is freed, not held to the next event.
        context.add_callback(self.store.wake_all)
        while context.is_active() and not self.stopping.is_set():
            events = self.store.events_after(request.job_id, version, WATCH_POLL_S)
            for event_version, event in events:
                version = event_version
                yield event
                if event.kind == pb.JobEvent.STATE and event.job.state in TERMINAL_STATES:
                    return

    def DownloadModel(self, request: pb.DownloadModelRequest, context):
        job = self.store.get(request.job_id)
        final = JobRunner.model_path(self.config, job.id)
        data = downloadable_model(self.config.state_dir, final, job)
        total = len(data)
        for offset in range(0, total, DOWNLOAD_CHUNK_BYTES):
            yield pb.Chunk(data=data[offset : offset + DOWNLOAD_CHUNK_BYTES], offset=offset, total_size=total)
