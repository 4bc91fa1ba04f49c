"""The gRPC API beyond training: health, reflection, listing and paging, cancel semantics, errors and the
CLI's JSON output, against a real coordinator on a loopback port."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool, json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from gradfleet.v1 import coordinator_pb2 as pb
from gradfleet.v1 import coordinator_pb2_grpc as pb_grpc
from tests.helpers import small_spec, wait_for, write_blobs, write_broken

pytestmark = [pytest.mark.integration, pytest.mark.ray]
ROOT = Path(__file__).resolve().parent.parent
SERVICE = "gradfleet.v1.Coordinator"


@pytest.fixture
def channel(coordinator):
    with grpc.insecure_channel(coordinator.address) as ch:
        yield ch


@pytest.fixture
def stub(channel) -> pb_grpc.CoordinatorStub:
    return pb_grpc.CoordinatorStub(channel)


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run the installed `gradfleet` console script (or the module if not installed) on this tree."""
    script = Path(sys.executable).with_name("gradfleet")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "service.cli"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [*command, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def failing_job(client, coordinator, name: str) -> pb.Job:
    """A job that fails fast (a NaN in its dataset) without starting any workers."""
    write_broken(coordinator.config.data_root / "broken.npz")
    return wait_for(client, client.submit(small_spec("npz:broken.npz", name=name)).id, timeout_s=60)


def test_health_service_reports_serving(channel) -> None:
    """The standard health service says SERVING for the server and for the Coordinator service."""
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, service


def test_reflection_describes_the_coordinator(channel) -> None:
    """Server reflection lists the Coordinator and resolves its file descriptor, as grpcurl needs."""
    database = ProtoReflectionDescriptorDatabase(channel)
    services = database.get_services()
    assert SERVICE in services
    assert "grpc.health.v1.Health" in services
    pool = descriptor_pool.DescriptorPool(database)
    service = pool.FindServiceByName(SERVICE)
    assert {m.name for m in service.methods} == {
        "SubmitJob",
        "GetJob",
        "ListJobs",
        "CancelJob",
        "WatchJob",
        "ScaleJob",
        "DownloadModel",
    }
    watch = service.methods_by_name["WatchJob"]
    assert watch.output_type.full_name == "gradfleet.v1.JobEvent"
    assert watch.server_streaming
    spec = pool.FindMessageTypeByName("gradfleet.v1.JobSpec")
    assert spec.fields_by_name["batch_size"].number == 6
    assert pool.FindFileContainingSymbol(SERVICE).name == "gradfleet/v1/coordinator.proto"


def test_list_filters_by_state_and_pages_newest_first(client, stub, coordinator) -> None:
    """With one job running and four queued behind it (two then cancelled), ListJobs filters by state
    and pages of 2 return every job exactly once, newest first."""
    write_blobs(coordinator.config.data_root / "blobs.npz", n_train=5000)
    long_job = client.submit(small_spec("npz:blobs.npz", name="long", epochs=1000, batchSize=10))
    wait_for(client, long_job.id, states={pb.RUNNING}, timeout_s=60)
    queued = [client.submit(small_spec("npz:blobs.npz", name=f"q{i}")) for i in range(4)]
    for job in queued[0::2]:
        assert client.cancel(job.id).state == pb.CANCELLED
    newest_first = [j.id for j in reversed([long_job, *queued])]

    seen, token, pages = [], "", 0
    while True:
        reply = stub.ListJobs(pb.ListJobsRequest(page_size=2, page_token=token), timeout=5)
        assert len(reply.jobs) <= 2
        seen += [j.id for j in reply.jobs]
        pages += 1
        token = reply.next_page_token
        if not token:
            break
    assert (seen, pages) == (newest_first, 3)

    def ids(state: int) -> list[str]:
        return [j.id for j in stub.ListJobs(pb.ListJobsRequest(state=state), timeout=5).jobs]

    assert ids(pb.CANCELLED) == [queued[2].id, queued[0].id]
    assert ids(pb.QUEUED) == [queued[3].id, queued[1].id]
    assert ids(pb.RUNNING) == [long_job.id]
    assert ids(pb.SUCCEEDED) == []
    assert [j.id for j in client.list(state="CANCELLED", page_size=1)] == ids(pb.CANCELLED)
    for job in (queued[1], queued[3], long_job):  # the queued ones first, so they never start
        client.cancel(job.id)
    wait_for(client, long_job.id, timeout_s=30)


def test_cancelling_a_finished_job_returns_it_unchanged(client, stub, coordinator) -> None:
    """CancelJob on a FAILED job returns the job exactly as it was, and leaves it so."""
    failed = failing_job(client, coordinator, "fails")
    assert failed.state == pb.FAILED
    assert stub.CancelJob(pb.CancelJobRequest(job_id=failed.id), timeout=5) == failed
    assert client.get(failed.id) == failed


def test_an_unknown_state_filter_is_an_invalid_argument(stub) -> None:
    """ListJobs with a state number JobState does not define names the field and the states."""
    with pytest.raises(grpc.RpcError) as error:
        stub.ListJobs(pb.ListJobsRequest(state=99), timeout=5)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details() == (
        "state: got 99; must be one of QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED, or unset for all"
    )


@pytest.mark.parametrize("token", ["-1", "12", "not-a-job"])
def test_a_page_token_the_server_did_not_issue_is_an_invalid_argument(stub, token: str) -> None:
    """ListJobs with a page_token that names none of the caller's jobs (a row number, garbage) is
    INVALID_ARGUMENT naming page_token."""
    with pytest.raises(grpc.RpcError) as error:
        stub.ListJobs(pb.ListJobsRequest(page_token=token), timeout=5)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details().startswith("page_token: not a token this server issued")


def test_empty_job_id_is_an_invalid_argument(stub) -> None:
    """GetJob, CancelJob and WatchJob with an empty id get INVALID_ARGUMENT naming job_id."""
    calls = [
        lambda: stub.GetJob(pb.GetJobRequest(job_id=""), timeout=5),
        lambda: stub.CancelJob(pb.CancelJobRequest(job_id=""), timeout=5),
        lambda: next(stub.WatchJob(pb.WatchJobRequest(job_id=""), timeout=5)),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as error:
            call()
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "job_id" in error.value.details()


@pytest.mark.parametrize(
    "uri",
    [
        "csv:" + "a" * 4_088 + ".csv",  # at the cap: its error quotes the path twice, over 8 KiB
        "csv:" + "a" * 4_992 + ".csv",
        "csv:" + "a" * 99_992 + ".csv",
        "idx:" + "x" * 256,  # one name over 255 bytes
        "idx:" + "\u20ac" * 4_000,  # under the character cap, 12,000 bytes
        "idx:" + "/".join(["\u00e9" * 100] * 30),  # each name fits, the path does not
        "npz:" + "\u20ac" * 4_000,
    ],
    ids=[
        "csv-4096",
        "csv-5000",
        "csv-100000",
        "idx-long-name",
        "idx-long-bytes",
        "idx-long-path",
        "npz-long-bytes",
    ],
)
def test_a_very_long_dataset_uri_is_an_invalid_argument_naming_it(stub, uri) -> None:
    """A URI near or over the length cap, or a path the OS refuses as too long, gets INVALID_ARGUMENT
    naming dataset.uri (never INTERNAL, never RESOURCE_EXHAUSTED for a status too long to send); the
    coordinator keeps serving."""
    with pytest.raises(grpc.RpcError) as error:
        stub.SubmitJob(small_spec(uri), timeout=10)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, error.value.details()
    assert error.value.details().startswith("dataset.uri: ")
    assert len(error.value.details()) <= 6_000
    listed = stub.ListJobs(pb.ListJobsRequest(page_size=1000), timeout=5).jobs
    assert not [job for job in listed if len(job.spec.dataset.uri) > 1000]


@pytest.mark.parametrize("num_workers", [0, 65, 2**32 - 1], ids=["zero", "over-limit", "uint32-max"])
def test_scale_outside_the_worker_range_is_an_invalid_argument(
    client, stub, coordinator, num_workers
) -> None:
    """ScaleJob with a worker count outside 1..max_workers_per_job (64) names num_workers and the range."""
    failed = failing_job(client, coordinator, "scaled")
    with pytest.raises(grpc.RpcError) as error:
        stub.ScaleJob(pb.ScaleJobRequest(job_id=failed.id, num_workers=num_workers), timeout=5)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        error.value.details()
        == f"num_workers: got {num_workers}; must be between 1 and 64 (--max-workers-per-job)"
    )


def test_cli_json_output_parses_into_job_messages(client, coordinator) -> None:
    """`gradfleet get ID --output json` and `gradfleet list --output json` print protobuf JSON that
    json_format parses back into the very Job messages the server holds."""
    first, second = failing_job(client, coordinator, "first"), failing_job(client, coordinator, "second")
    server = ("--server", coordinator.address)

    got = run_cli("get", first.id, "--output", "json", *server)
    assert got.returncode == 0, got.stderr
    assert json_format.Parse(got.stdout, pb.Job()) == client.get(first.id)
    assert json.loads(got.stdout)["state"] == "FAILED"  # enums by name, for scripts

    listed = run_cli("list", "--output", "json", *server)
    assert listed.returncode == 0, listed.stderr
    response = json_format.Parse(listed.stdout, pb.ListJobsResponse())
    assert list(response.jobs) == [client.get(second.id), client.get(first.id)]

    missing = run_cli("get", "no-such-job", "--output", "json", *server)
    assert missing.returncode == 2
    assert "NOT_FOUND" in missing.stderr
