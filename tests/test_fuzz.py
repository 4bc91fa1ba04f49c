"""Fuzzing SubmitJob on a real coordinator: random field values and bytes that are not protobuf
get a proper status (never INTERNAL or UNKNOWN), and the server still runs a valid job after."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gradfleet.v1 import coordinator_pb2 as pb
from service.client import CoordinatorClient
from tests.conftest import IN_CI, start_coordinator
from tests.helpers import small_spec, wait_for, write_blobs

pytestmark = [pytest.mark.integration, pytest.mark.ray, pytest.mark.slow]

EXAMPLES = 1500  # per test; about 10-20 s each on 2 busy cores
CLIENT_MISTAKES = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}
SUBMIT = "/gradfleet.v1.Coordinator/SubmitJob"
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=IN_CI,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

U32, U64, I32 = st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1), st.integers(-(2**31), 2**31 - 1)
small_or_any = st.one_of(st.integers(0, 300), U32)
enum_values = st.one_of(st.integers(-1, 6), I32)  # proto3 enums are open: any int32 arrives
floats = st.floats(allow_nan=True, allow_infinity=True)
URIS = [
    "npz:blobs.npz", "fashion-mnist", "npz:missing.npz", "npz:../state/jobs.sqlite3", "csv:/etc/passwd",
    "idx:.", "idx:..", "npz:", "csv:blobs.npz", "npz:blobs.npz\x00", "npz:" + "a" * 5000, "npz:~/x",
]  # fmt: skip


# Optional fields as (path of the message holding it, field, values); "" is the spec itself.
EXTRA_FIELDS = [
    *[("", name, small_or_any) for name in ("batch_size", "epochs", "num_workers", "micro_shards")],
    *[("", name, small_or_any) for name in ("eval_top_k", "checkpoint_every_steps", "max_rollbacks")],
    ("", "max_worker_restarts", small_or_any),
    *[("", name, floats) for name in ("label_smoothing", "huber_delta", "rollback_lr_factor")],
    ("", "request_id", st.text(max_size=200)),
    ("", "on_divergence", enum_values),
    *[("optimizer", name, floats) for name in ("momentum", "beta1", "beta2", "epsilon", "rho")],
    *[("optimizer", name, floats) for name in ("weight_decay", "clip_norm")],
    ("optimizer.schedule", "warmup_steps", small_or_any),
    *[("optimizer.schedule", name, floats) for name in ("pct_start", "div_factor", "final_div_factor")],
    *[("layers", name, floats) for name in ("slope", "dropout")],
    ("layers", "init", enum_values),
    ("optimizer.schedule", "milestones", st.lists(small_or_any, max_size=4)),
]


def _set_extra(draw, spec: pb.JobSpec, path: str, name: str, values) -> None:
    """Set one EXTRA_FIELDS entry; a layer field goes on a random layer (if there is one)."""
    holders = [spec]
    for part in filter(None, path.split(".")):
        holders = list(getattr(holders[0], part)) if part == "layers" else [getattr(holders[0], part)]
    if not holders:
        return
    holder, value = holders[draw(st.integers(0, len(holders) - 1))], draw(values)
    if name == "milestones":
        holder.milestones[:] = value
    else:
        setattr(holder, name, value)


@st.composite
def job_specs(draw) -> pb.JobSpec:
    """JobSpecs with every field drawn from its whole wire range, or a valid spec with one optional
    field drawn from its whole range (so each field's own check is reached)."""
    if draw(st.booleans()):
        spec = small_spec("npz:blobs.npz")
        _set_extra(draw, spec, *draw(st.sampled_from(EXTRA_FIELDS)))
        return spec
    spec = pb.JobSpec(name=draw(st.text(max_size=200)), seed=draw(U64))
    spec.dataset.uri = draw(st.one_of(st.sampled_from(URIS), st.text(max_size=100)))
    spec.dataset.preprocessing = draw(enum_values)
    spec.dataset.max_train_samples = draw(small_or_any)
    spec.dataset.max_test_samples = draw(small_or_any)
    for _ in range(draw(st.integers(0, 5))):
        spec.layers.add(units=draw(st.one_of(st.integers(0, 40), U32)), activation=draw(enum_values))
    spec.loss = draw(enum_values)
    spec.eval_every_steps = draw(small_or_any)
    opt = spec.optimizer
    opt.kind, opt.learning_rate = draw(enum_values), draw(floats)
    opt.schedule.kind = draw(enum_values)
    if draw(st.booleans()):
        opt.schedule.gamma, opt.schedule.step_epochs = draw(floats), draw(U32)
        opt.schedule.min_learning_rate = draw(floats)
    for extra in EXTRA_FIELDS:
        if draw(st.booleans()):
            _set_extra(draw, spec, *extra)
    return spec


@st.composite
def malformed_bytes(draw) -> bytes:
    """Random bytes, or a valid spec's bytes cut short or with bytes overwritten."""
    valid = small_spec("npz:blobs.npz").SerializeToString()
    kind = draw(st.sampled_from(["random", "cut", "overwrite"]))
    if kind == "random":
        return draw(st.binary(max_size=300))
    if kind == "cut":
        return valid[: draw(st.integers(0, len(valid) - 1))]
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


@pytest.fixture(scope="module")
def server(ray_session, tmp_path_factory) -> Iterator:
    """A coordinator whose one running slot is held by a long job, so accepted fuzz jobs stay
    queued and are cancelled there, cheaply."""
    running = start_coordinator(tmp_path_factory.mktemp("fuzz"), max_running_jobs=1)
    write_blobs(running.config.data_root / "blobs.npz")
    with CoordinatorClient(running.address) as client:
        blocker = client.submit(small_spec("npz:blobs.npz", epochs=10_000, numWorkers=1, batchSize=100))
        wait_for(client, blocker.id, states={pb.RUNNING}, timeout_s=60)
        yield running
        client.cancel(blocker.id)
    running.stop(grace_s=1.0)


@pytest.fixture(scope="module")
def channel(server) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.address) as chan:
        yield chan


def _answer(call, request) -> tuple[grpc.StatusCode, bytes | None]:
    try:
        return grpc.StatusCode.OK, call(request, timeout=30)
    except grpc.RpcError as exc:
        # More workers than the cluster has CPUs is a valid spec this cluster cannot run.
        too_big = exc.code() == grpc.StatusCode.FAILED_PRECONDITION and "CPUs" in exc.details()
        assert exc.code() in CLIENT_MISTAKES or too_big, f"{exc.code()}: {exc.details()} for {request!r}"
        return exc.code(), None


def _cancel_if_accepted(channel: grpc.Channel, code: grpc.StatusCode, reply: bytes | None) -> None:
    if code == grpc.StatusCode.OK:
        job = pb.Job.FromString(reply)
        cancel = channel.unary_unary("/gradfleet.v1.Coordinator/CancelJob")
        cancel(pb.CancelJobRequest(job_id=job.id).SerializeToString(), timeout=10)


@FUZZ
@given(spec=job_specs())
def test_random_specs_get_a_client_status(channel, spec):
    """Every random JobSpec is accepted, or refused as INVALID_ARGUMENT or RESOURCE_EXHAUSTED (or
    FAILED_PRECONDITION when it asks for more workers than the cluster has CPUs)."""
    call = channel.unary_unary(SUBMIT)
    code, reply = _answer(call, spec.SerializeToString())
    _cancel_if_accepted(channel, code, reply)


@FUZZ
@given(data=malformed_bytes())
def test_bytes_that_are_not_a_spec_get_a_client_status(channel, data):
    """Random and damaged request bytes are refused as the client's mistake, never INTERNAL."""
    code, reply = _answer(channel.unary_unary(SUBMIT), data)
    _cancel_if_accepted(channel, code, reply)


def _varint(value: int) -> bytes:
    out = b""
    while value > 0x7F:
        out, value = out + bytes([value & 0x7F | 0x80]), value >> 7
    return out + bytes([value])


def test_deeply_nested_request_bytes_get_a_client_status(channel):
    """SubmitJob takes protobuf, never JSON, and a JobSpec nests no deeper than its schema; the one way
    to nest a request deeply, unknown groups inside each other (field 100, 5,000 deep), is refused as
    the client's mistake, not a RecursionError or INTERNAL."""
    data = _varint(100 << 3 | 3) * 5000 + _varint(100 << 3 | 4) * 5000
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary(SUBMIT)(data, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()


def test_the_server_still_trains_after_the_fuzzing(server):
    """After the fuzz tests, a valid job runs to SUCCEEDED on the same server."""
    with CoordinatorClient(server.address) as client:
        for job in client.list(state="RUNNING"):
            client.cancel(job.id)  # the blocker
        job = wait_for(client, client.submit(small_spec("npz:blobs.npz", epochs=1)).id, timeout_s=120)
    assert job.state == pb.SUCCEEDED, job.message
