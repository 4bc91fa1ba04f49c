"""Checkpoint files, idempotent submission, the recovery spec fields and the runner's fault bookkeeping,
without Ray."""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from pathlib import Path
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from gradfleet.v1 import coordinator_pb2 as pb
from service import checkpoints
from service.checkpoints import Checkpoint, CheckpointError, CheckpointStore, downloadable_model, spec_hash
from service.client import EXISTING_JOB_METADATA, CoordinatorClient
from service.config import ServerConfig
from service.errors import InvalidRequest, InvalidSpec, JobNotFound, JobNotReady, TrainingFailed
from service.export import load_model, write_model
from service.jobs import JobStore
from service.metrics import Metrics
from service.param_server import Diverged, ParameterServer, ParameterServerCore
from service.recovery import FaultPolicy
from service.runner import JobRunner
from service.scheduler import Scheduler
from service.spec_defaults import with_defaults
from service.spec_validation import validate_spec
from service.startup import StartupError
from service.wording import clause, plural
from service.worker_cpus import ScaleRequest, WorkerCPUs
from tests.helpers import small_spec
from workers.group import WorkerLost
from workers.nn import SGD, Adam, Network


def make_checkpoint(step: int, spec: pb.JobSpec) -> Checkpoint:
    net = Network([4, 5, 3], ["relu", "identity"], "softmax_cross_entropy")
    params = net.init_params(np.random.default_rng(step))
    adam = Adam(net.num_params, np.float32)
    adam.step(params, np.ones_like(params), 0.01)
    return Checkpoint(
        step=step,
        params=params,
        optimizer=adam.state_dict(),
        samples_trained=step * 50,
        epoch=1 + step // 10,
        spec_hash=spec_hash(spec),
        seed=7,
        layer_sizes=(4, 5, 3),
        activations=("relu", "identity"),
        loss="softmax_cross_entropy",
        input_offset=np.zeros(4, np.float32),
        input_scale=np.ones(4, np.float32),
        lr_scale=0.5,
        rollbacks=1,
    )


@pytest.fixture
def spec() -> pb.JobSpec:
    return with_defaults(small_spec("npz:blobs.npz"))


def test_a_checkpoint_round_trips_exactly(tmp_path: Path, spec) -> None:
    """Parameters, Adam moments and step count, counters and the rollback state come back bit for bit."""
    store = CheckpointStore(tmp_path, "job1")
    saved = make_checkpoint(20, spec)
    store.save(saved)
    loaded, skipped = store.latest(spec_hash(spec))
    assert skipped == []
    assert loaded.step == 20 and loaded.samples_trained == 1000 and loaded.epoch == 3
    assert loaded.params.tobytes() == saved.params.tobytes()
    assert loaded.optimizer["step_count"] == 1
    for key in ("first_moment", "second_moment"):
        assert loaded.optimizer[key].tobytes() == saved.optimizer[key].tobytes()
    assert (loaded.lr_scale, loaded.rollbacks) == (0.5, 1)
    restored = Adam(len(saved.params), np.float32)
    restored.load_state_dict(loaded.optimizer)  # what the parameter server does on resume
    assert restored.step_count == 1


def test_only_the_last_two_checkpoints_are_kept(tmp_path: Path, spec) -> None:
    """After four saves the folder holds the two newest checkpoints and no leftover temporary file."""
    store = CheckpointStore(tmp_path, "job1")
    store.folder.mkdir(parents=True)
    (store.folder / ".step-000000000005.ckpt.999.tmp").write_bytes(b"half written by a killed process")
    for step in (10, 20, 30, 40):
        store.save(make_checkpoint(step, spec))
    assert sorted(p.name for p in store.folder.iterdir()) == [
        "step-000000000030.ckpt",
        "step-000000000040.ckpt",
    ]


def test_a_corrupt_checkpoint_does_not_push_a_good_one_out(tmp_path: Path, spec) -> None:
    """A corrupt newest checkpoint does not count toward the two kept: after the job falls back
    past it and saves again, two intact checkpoints remain, so one more damaged file still leaves
    a good one."""
    store = CheckpointStore(tmp_path, "job1")
    store.save(make_checkpoint(10, spec))
    corrupt = store.save(make_checkpoint(20, spec))
    corrupt.write_bytes(corrupt.read_bytes()[:300])
    restarted = CheckpointStore(tmp_path, "job1")  # a coordinator restart
    assert restarted.latest(spec_hash(spec))[0].step == 10
    newer = restarted.save(make_checkpoint(30, spec))
    names = ["step-000000000010.ckpt", "step-000000000020.ckpt", "step-000000000030.ckpt"]
    assert sorted(p.name for p in restarted.folder.iterdir()) == names
    newer.write_bytes(b"damaged as well")
    loaded, skipped = restarted.latest(spec_hash(spec))
    assert loaded.step == 10 and len(skipped) == 2
    restarted.save(make_checkpoint(40, spec))
    restarted.save(make_checkpoint(50, spec))
    assert sorted(p.name for p in restarted.folder.iterdir()) == [
        "step-000000000040.ckpt",
        "step-000000000050.ckpt",
    ]


def _save_checkpoint(path: Path, spec: pb.JobSpec) -> Path:
    return CheckpointStore(path, "job1").save(make_checkpoint(10, spec))


def _save_model(path: Path, spec: pb.JobSpec) -> Path:
    model = path / "models" / "job1.npz"
    write_model(model, {"layer_0_weight": np.ones((2, 3), np.float32)})
    assert load_model(model)["layer_0_weight"].tolist() == [[1.0] * 3] * 2
    return model


@pytest.mark.parametrize("save", [_save_checkpoint, _save_model], ids=["checkpoint", "model"])
def test_files_are_synced_then_renamed_then_their_folder_synced(
    tmp_path: Path, spec, monkeypatch, save
) -> None:
    """Checkpoints and exported models fsync a temporary file, rename it into place and fsync the
    folder (so the rename survives a power cut), leaving no temporary file behind."""
    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    path = save(tmp_path, spec)
    assert synced == [str(path.parent / f".{path.name}.{os.getpid()}.tmp"), str(path.parent)]
    assert [p.name for p in path.parent.iterdir()] == [path.name]


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_checkpoint_is_reported_and_the_previous_one_used(tmp_path: Path, spec, damage) -> None:
    """A truncated or bit-flipped newest checkpoint fails its checksum; the one before it is used."""
    store = CheckpointStore(tmp_path, "job1")
    store.save(make_checkpoint(10, spec))
    newest = store.save(make_checkpoint(20, spec))
    blob = bytearray(newest.read_bytes())
    if damage == "truncate":
        blob = blob[: len(blob) // 2]
    else:
        blob[-100] ^= 0x01
    newest.write_bytes(bytes(blob))
    loaded, skipped = store.latest(spec_hash(spec))
    assert loaded.step == 10
    assert len(skipped) == 1 and "step-000000000020.ckpt" in skipped[0] and "checksum" in skipped[0]


def test_no_usable_checkpoint_is_an_error_not_a_silent_restart(tmp_path: Path, spec) -> None:
    """When every checkpoint is damaged, latest() raises naming each file instead of returning None."""
    store = CheckpointStore(tmp_path, "job1")
    path = store.save(make_checkpoint(10, spec))
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=r"step-000000000010\.ckpt: .*checksum"):
        store.latest(spec_hash(spec))
    assert CheckpointStore(tmp_path, "other").latest() == (None, [])


def test_a_missing_checkpoint_folder_of_a_job_that_wrote_one_is_an_error(tmp_path: Path, spec) -> None:
    """No checkpoint at all is fine for a job that never wrote one; one whose record says it did
    (`written_step`) gets an error naming the folder, not a silent restart from step 0."""
    store = CheckpointStore(tmp_path, "job1")
    assert store.latest(spec_hash(spec)) == (None, [])
    with pytest.raises(CheckpointError) as missing:
        store.latest(spec_hash(spec), written_step=500)
    assert str(missing.value).startswith(
        f"no checkpoint in {store.folder}, although the job wrote one at step 500 (was the folder removed"
    )


def test_a_checkpoint_of_another_spec_is_not_used(tmp_path: Path, spec) -> None:
    """A checkpoint of another spec (seed) is refused; the name and worker count do not matter."""
    store = CheckpointStore(tmp_path, "job1")
    store.save(make_checkpoint(10, spec))
    renamed = with_defaults(small_spec("npz:blobs.npz", name="other", numWorkers=3))
    assert spec_hash(renamed) == spec_hash(spec)
    reseeded = with_defaults(small_spec("npz:blobs.npz", seed=8))
    with pytest.raises(CheckpointError, match="different spec"):
        store.latest(spec_hash(reseeded))


def test_a_running_job_downloads_its_latest_checkpoint(tmp_path: Path, spec) -> None:
    """Download of a job without a final model serves the checkpoint's weights; with none it is refused."""
    job = pb.Job(id="job1", spec=spec, state=pb.RUNNING)
    with pytest.raises(JobNotReady, match="no checkpoint yet"):
        downloadable_model(tmp_path, tmp_path / "models" / "job1.npz", job)
    saved = make_checkpoint(10, spec)
    CheckpointStore(tmp_path, "job1").save(saved)
    with downloadable_model(tmp_path, tmp_path / "models" / "job1.npz", job) as export:
        (tmp_path / "model.npz").write_bytes(export.read())
    with np.load(tmp_path / "model.npz", allow_pickle=False) as model:
        assert model["layer_0_weight"].shape == (4, 5)
        flat = np.concatenate([model[n].ravel() for n in ("layer_0_weight", "layer_0_bias")])
    assert flat.tobytes() == saved.params[: 4 * 5 + 5].tobytes()


@pytest.mark.parametrize("state", [pb.CANCELLED, pb.FAILED], ids=["cancelled", "failed"])
def test_an_ended_job_without_a_checkpoint_says_it_has_no_model(tmp_path: Path, spec, state: int) -> None:
    """Download of a cancelled or failed job that wrote no checkpoint says it ended and has no model."""
    job = pb.Job(id="job1", spec=spec, state=state)
    with pytest.raises(JobNotReady) as refused:
        downloadable_model(tmp_path, tmp_path / "models" / "job1.npz", job)
    ended = "failed" if state == pb.FAILED else "was cancelled"
    assert refused.value.message == (
        f"job job1 {ended} before it wrote a checkpoint, so it has no model to download; "
        "resubmit it to train one"
    )


def test_the_header_names_the_format(spec) -> None:
    """A checkpoint file starts with the magic line and a 64-digit sha256."""
    blob = checkpoints.encode(make_checkpoint(1, spec))
    assert blob.startswith(checkpoints.MAGIC)
    digest = blob[len(checkpoints.MAGIC) : len(checkpoints.MAGIC) + 64]
    assert len(digest) == 64 and all(c in b"0123456789abcdef" for c in digest)


def test_a_request_id_makes_submission_idempotent_across_restarts(tmp_path: Path, spec) -> None:
    """The same request id returns the same job, also after reopening the store; another spec is refused."""
    spec.request_id = "req-1"
    store = JobStore(tmp_path)
    first, created = store.create(spec)
    again, created_again = store.create(spec)
    assert created and not created_again and again.id == first.id
    store.close()
    reopened = JobStore(tmp_path)
    assert reopened.create(spec)[0].id == first.id
    other = with_defaults(small_spec("npz:blobs.npz", seed=99))
    other.request_id = "req-1"
    with pytest.raises(InvalidRequest, match="request_id"):
        reopened.create(other)
    plain, _ = reopened.create(with_defaults(small_spec("npz:blobs.npz")))
    plain2, _ = reopened.create(with_defaults(small_spec("npz:blobs.npz")))
    assert plain.id != plain2.id  # no request id: every submission is a new job
    assert len(reopened.list()[0]) == 3


def test_recovery_fields_get_defaults_and_are_validated() -> None:
    """Checkpoints every 500 steps, FAIL on divergence and 3 worker restarts by default; a rollback
    factor outside (0, 1) and an over-long request id are rejected naming the field."""
    spec = with_defaults(small_spec("npz:blobs.npz"))
    assert (spec.checkpoint_every_steps, spec.on_divergence, spec.max_worker_restarts) == (500, pb.FAIL, 3)
    assert (spec.rollback_lr_factor, spec.max_rollbacks) == (0.5, 3)
    assert with_defaults(small_spec("npz:blobs.npz", checkpointEverySteps=0)).checkpoint_every_steps == 0
    with pytest.raises(InvalidSpec, match=r"rollback_lr_factor: got 1; must be in"):
        rollback = small_spec("npz:blobs.npz", onDivergence="ROLLBACK", rollbackLrFactor=1.0)
        validate_spec(with_defaults(rollback))
    with pytest.raises(InvalidSpec, match="request_id: got 129 characters"):
        validate_spec(with_defaults(small_spec("npz:blobs.npz", requestId="x" * 129)))


class _FlakyStub:
    """A SubmitJob stub that is unreachable `failures` times, then answers; records each request.
    With `existing` its answer says the request id had already made the job (a lost first attempt)."""

    def __init__(self, failures: int, existing: bool = False) -> None:
        self.failures, self.requests = failures, []
        trailing = ((EXISTING_JOB_METADATA, "true"),) if existing else ()
        self._call = SimpleNamespace(trailing_metadata=lambda: trailing)
        self.SubmitJob = SimpleNamespace(with_call=self._submit)

    def _submit(self, spec: pb.JobSpec, timeout: float, metadata=()) -> tuple[pb.Job, SimpleNamespace]:
        self.requests.append(spec)
        if len(self.requests) <= self.failures:
            raise _Unavailable()
        return pb.Job(id="job1", spec=spec), self._call


class _Unavailable(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE


def test_the_client_retries_a_submission_with_one_request_id() -> None:
    """An unreachable server is retried, every attempt carrying the same generated request id."""
    client = CoordinatorClient("127.0.0.1:1")
    client._stub = _FlakyStub(failures=2)
    job = client.submit(small_spec("npz:blobs.npz"), retry_delays=(0, 0, 0))
    ids = {r.request_id for r in client._stub.requests}
    assert len(client._stub.requests) == 3 and len(ids) == 1 and len(ids.pop()) == 32
    assert job.spec.request_id == client._stub.requests[0].request_id
    client._stub = _FlakyStub(failures=5)
    with pytest.raises(grpc.RpcError):
        client.submit(small_spec("npz:blobs.npz"), retry_delays=(0, 0))
    assert len(client._stub.requests) == 3
    client.close()


def test_a_retry_that_finds_its_own_lost_attempt_counts_as_created() -> None:
    """The server says the job already existed: with a generated request id that job can only be this
    call's lost first attempt (created); with the caller's own request id it may be an earlier call's."""
    client = CoordinatorClient("127.0.0.1:1")
    client._stub = _FlakyStub(failures=1, existing=True)
    job, created = client.submit_with_status(small_spec("npz:blobs.npz"), retry_delays=(0,))
    assert created and job.id == "job1"
    client._stub = _FlakyStub(failures=1, existing=True)
    _, created = client.submit_with_status(small_spec("npz:blobs.npz", requestId="mine"), retry_delays=(0,))
    assert not created
    client.close()


def test_the_fault_policy_gives_up_after_its_limits() -> None:
    """Replacements past max_worker_restarts fail naming the worker, step and cause; rollbacks scale
    the rate by the factor each time and fail once used up, naming the checkpoint kept."""
    spec = with_defaults(small_spec("npz:blobs.npz", maxWorkerRestarts=1, onDivergence="ROLLBACK"))
    policy = FaultPolicy.for_spec(spec)
    policy.actor_died("worker 1 (pid 42)", 7, 1, RuntimeError("gone"))
    expected = r"worker 1 \(pid 42\) died at step 9 \(epoch 1\): gone; gave up after 1"
    with pytest.raises(WorkerLost, match=expected):
        policy.actor_died("worker 1 (pid 42)", 9, 1, RuntimeError("gone"))
    assert [policy.diverged("loss became NaN", None) for _ in range(3)] == [0.5, 0.25, 0.125]
    with pytest.raises(TrainingFailed, match="NaN; tried 3 rollbacks; the checkpoint at step 20 stays"):
        policy.diverged("loss became NaN", "the checkpoint at step 20")
    failing = FaultPolicy.for_spec(with_defaults(small_spec("npz:blobs.npz")))
    with pytest.raises(TrainingFailed, match=r"^loss became NaN$"):
        failing.diverged("loss became NaN", None)


def test_the_fault_policy_counts_each_dead_worker_and_server_restarts_apart() -> None:
    """Two workers dying at once are two replacements; a parameter-server restart is counted apart
    but against the same max_worker_restarts; past it nothing more is counted."""
    policy = FaultPolicy(max_restarts=3, rollback_on_divergence=False, max_rollbacks=0, lr_factor=0.5)
    policy.actor_died("worker 0 (pid 7), worker 1 (pid 8)", 4, 1, WorkerLost("gone"), workers=2)
    policy.actor_died("the parameter server", 9, 1, WorkerLost("gone"), server=True)
    assert (policy.restarts, policy.server_restarts) == (2, 1)
    with pytest.raises(WorkerLost, match=r"gave up after 3 replacements \(max_worker_restarts\)$"):
        policy.actor_died("the parameter server", 12, 1, WorkerLost("gone"), server=True)
    one = FaultPolicy(max_restarts=1, rollback_on_divergence=False, max_rollbacks=0, lr_factor=0.5)
    with pytest.raises(WorkerLost) as lost:
        one.actor_died("worker 0 (pid 7), worker 1 (pid 8)", 4, 1, WorkerLost("gone"), workers=2)
    assert str(lost.value) == (
        "worker 0 (pid 7), worker 1 (pid 8) died at step 4 (epoch 1): gone; gave up: replacing 2 actors "
        "would make 2 replacements, over the 1 allowed (max_worker_restarts)"
    )
    assert (one.restarts, one.server_restarts) == (0, 0)


def test_a_gradient_norm_spike_is_caught_before_the_update() -> None:
    """A norm 1000 times the recent median raises Diverged naming the step; steady norms do not."""
    server = ParameterServer(np.zeros(4, np.float32), SGD(4, np.float32), lambda step: 0.1)
    core = ParameterServerCore(SimpleNamespace(plan=SimpleNamespace(batch_size=10)), server, 100, 1, 1.0)
    for norm in np.linspace(1.0, 3.0, 30):  # drifting norms, as in healthy training
        core._check_spike(float(norm), 1)
    core._check_spike(500.0, 1)  # large, but under the factor
    spike = r"gradient norm 1e\+04 is \d+ times its recent median at epoch 1 step 1"
    with pytest.raises(Diverged, match=spike):
        core._check_spike(1e4, 1)
    core.forget_history()
    core._check_spike(1e4, 1)  # no history after a rollback: nothing to compare with


def test_a_converged_models_tiny_gradient_bump_is_not_a_spike() -> None:
    """Norms near 0 (an easy dataset, fitted): a jump to 2.4e-5, 1000 times the median, harms nothing;
    a jump past SPIKE_MIN_NORM from there still counts. (A 50-epoch job on separable blobs was failed
    as diverged at epoch 3.)"""
    server = ParameterServer(np.zeros(4, np.float32), SGD(4, np.float32), lambda step: 0.01)
    core = ParameterServerCore(SimpleNamespace(plan=SimpleNamespace(batch_size=10)), server, 100, 1, 1.0)
    for norm in np.geomspace(3e-8, 1e-8, 30):
        core._check_spike(float(norm), 3)
    core._check_spike(2.41e-5, 3)
    with pytest.raises(Diverged, match=r"gradient norm 5 is \d+ times its recent median"):
        core._check_spike(5.0, 3)


def test_a_finished_model_is_served_after_a_restart(tmp_path: Path, spec) -> None:
    """A SUCCEEDED job's final model is read from the state folder by a freshly opened store."""
    store = JobStore(tmp_path)
    job, _ = store.create(spec)
    store.update(job.id, lambda j: setattr(j, "state", pb.SUCCEEDED))
    final = tmp_path / "models" / f"{job.id}.npz"
    final.parent.mkdir()
    final.write_bytes(b"the final model")
    store.close()
    reopened = JobStore(tmp_path)
    with downloadable_model(tmp_path, final, reopened.get(job.id)) as model:
        assert model.read() == b"the final model"


def test_a_retried_submit_matches_its_job_after_a_scale(tmp_path: Path, spec) -> None:
    """A retry with the request id returns the job also after ScaleJob changed its num_workers."""
    spec.request_id = "req-scaled"
    store = JobStore(tmp_path)
    job, _ = store.create(spec)
    store.update(job.id, lambda j: setattr(j.spec, "num_workers", 5))
    assert store.find_request(spec).id == job.id


def test_a_request_id_belongs_to_the_owner_that_sent_it(tmp_path: Path, spec) -> None:
    """Another owner's request id is a new job of its own; a different spec under it names only
    that owner's job."""
    spec.request_id = "shared"
    store = JobStore(tmp_path)
    alice, _ = store.create(spec, owner="alice")
    bob, created = store.create(spec, owner="bob")
    assert created and bob.id != alice.id and bob.owner == "bob"
    assert store.find_request(spec, "alice").id == alice.id and store.find_request(spec, "carol") is None
    other = with_defaults(small_spec("npz:blobs.npz", seed=99, requestId="shared"))
    with pytest.raises(InvalidRequest) as caught:
        store.create(other, owner="bob")
    assert bob.id in caught.value.message and alice.id not in caught.value.message


def _old_store(folder: Path, jobs: list[pb.Job]) -> None:
    """A job store as coordinators before per-owner request ids wrote it: one global request-id index."""
    folder.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(folder / "jobs.sqlite3") as db:
        db.execute(
            "CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, "
            "state INTEGER NOT NULL, record BLOB NOT NULL, request_id TEXT)"
        )
        db.execute("CREATE UNIQUE INDEX jobs_request_id ON jobs (request_id)")
        for job in jobs:
            db.execute(
                "INSERT INTO jobs (id, state, record, request_id) VALUES (?, ?, ?, ?)",
                (job.id, job.state, job.SerializeToString(), job.spec.request_id or None),
            )
    db.close()


def test_an_old_state_folder_keeps_its_request_ids_per_owner(tmp_path: Path, spec) -> None:
    """A store written with global request ids opens with its jobs; a retry by their owner still
    finds each, another owner's same request id makes a new job, and it survives a reopening."""
    spec.request_id = "rid-1"
    old = pb.Job(id="aaaaaaaaaaaa", spec=spec, state=pb.SUCCEEDED, owner="alice")
    _old_store(tmp_path, [old])
    store = JobStore(tmp_path)
    assert store.get(old.id).owner == "alice"
    assert store.create(spec, owner="alice") == (old, False)
    bob, created = store.create(spec, owner="bob")
    assert created
    store.close()
    reopened = JobStore(tmp_path)
    assert reopened.find_request(spec, "alice").id == old.id
    assert reopened.find_request(spec, "bob").id == bob.id
    assert len(reopened.list()[0]) == 2


def test_a_cancel_request_is_on_disk_and_an_old_store_gains_the_column(tmp_path: Path, spec) -> None:
    """request_cancel is written through at once: a store opened afterwards (the next coordinator,
    after a SIGKILL) sees it. A store from before the column opens with no cancel requested."""
    old = pb.Job(id="aaaaaaaaaaaa", spec=spec, state=pb.RUNNING)
    _old_store(tmp_path, [old])
    store = JobStore(tmp_path)
    assert not store.cancel_requested(old.id)
    store.request_cancel(old.id)
    assert store.cancel_requested(old.id) and store.get(old.id) == old
    with pytest.raises(JobNotFound):
        store.request_cancel("bbbbbbbbbbbb")
    reopened = JobStore(tmp_path)  # while the first is still open, as after a SIGKILL
    assert reopened.cancel_requested(old.id)
    store.close()
    reopened.close()


def test_the_queue_age_counts_from_when_a_job_last_became_queued(tmp_path: Path, spec) -> None:
    """A job submitted an hour ago and re-queued just now has waited seconds, not an hour."""
    store = JobStore(tmp_path)
    job, _ = store.create(spec)
    store.update(job.id, lambda j: j.created_at.FromSeconds(j.created_at.seconds - 3600))
    store.update(job.id, lambda j: setattr(j, "state", pb.RUNNING))
    store.update(job.id, lambda j: setattr(j, "state", pb.QUEUED))
    config = ServerConfig(state_dir=tmp_path)
    scheduler = Scheduler(store, Metrics(CollectorRegistry(), store.counts_by_state), config)
    assert 0 <= scheduler.oldest_queued_seconds() < 60


def _runner(tmp_path: Path, spec: pb.JobSpec) -> JobRunner:
    """A runner of a stored job, set up as far as its checkpoints and fault policy go (no Ray)."""
    store = JobStore(tmp_path)
    job, _ = store.create(spec)
    config = ServerConfig(state_dir=tmp_path)
    runner = JobRunner(job.id, store, Metrics(CollectorRegistry(), store.counts_by_state), config, None)
    runner._setup = SimpleNamespace(spec=spec, spec_hash=spec_hash(spec))
    runner._policy = FaultPolicy.for_spec(spec)
    return runner


def test_divergence_fails_with_its_reason_even_when_checkpoints_are_damaged(tmp_path: Path, spec) -> None:
    """With on_divergence FAIL the job fails naming the divergence, never a checkpoint error."""
    runner = _runner(tmp_path, spec)
    runner.checkpoints.folder.mkdir(parents=True)
    (runner.checkpoints.folder / "step-000000000020.ckpt").write_bytes(b"truncated")
    message = (
        "loss became NaN at epoch 1 step 21 (learning rate 0.1); lower the learning rate or enable clipping"
    )
    with pytest.raises(TrainingFailed) as failed:
        runner._faults.rollback(Diverged(message), runner._setup, runner._policy)
    assert failed.value.message == message


def test_a_checkpoint_being_written_lands_before_the_job_ends(tmp_path: Path, spec) -> None:
    """A slow checkpoint write still pending when the job fails is finished first: the final state
    is the job's last event, and its record has the checkpoint."""
    runner = _runner(tmp_path, spec)
    save = runner.checkpoints.save

    def slow_save(ckpt: Checkpoint) -> None:
        time.sleep(0.3)  # a slow disk
        save(ckpt)

    runner.checkpoints.save = slow_save
    runner._writer.queue(make_checkpoint(20, spec))
    runner._finish(pb.FAILED, "boom")
    runner._writer.close()
    events = runner.store.events_after(runner.job_id, 0, 0)
    assert events[-1][1].kind == pb.JobEvent.STATE and events[-1][1].job.state == pb.FAILED
    assert runner.store.get(runner.job_id).progress.checkpoint_step == 20


def test_a_watcher_gets_exactly_the_events_after_its_version_oldest_first(tmp_path: Path) -> None:
    """events_after reads from the newest end; it must still return every newer event, in order, and
    only those of the history it keeps."""
    store = JobStore(tmp_path)
    job, _ = store.create(with_defaults(small_spec("npz:blobs.npz")))
    start, _ = store.snapshot(job.id)
    for step in range(1, 6):
        store.update(job.id, lambda j, s=step: setattr(j.progress, "step", s))
    events = store.events_after(job.id, start + 2, timeout_s=0)
    assert [e.job.progress.step for _, e in events] == [3, 4, 5]
    assert [v for v, _ in events] == [start + 3, start + 4, start + 5]
    assert store.events_after(job.id, start + 5, timeout_s=0) == []
    store.close()


def test_an_unreadable_job_record_is_skipped_and_its_row_kept(tmp_path: Path, spec, caplog) -> None:
    """One job whose stored record is corrupt is logged and skipped; the others load, the row stays."""
    store = JobStore(tmp_path)
    bad, _ = store.create(spec)
    good, _ = store.create(spec)
    store.close()
    with sqlite3.connect(tmp_path / "jobs.sqlite3") as db:
        db.execute("UPDATE jobs SET record = ? WHERE id = ?", (b"\xff\xff\xff", bad.id))
    with caplog.at_level(logging.ERROR, logger="service.jobs"):
        reopened = JobStore(tmp_path)
    assert [job.id for job in reopened.list()[0]] == [good.id]
    assert [r.getMessage() for r in caplog.records if r.name == "service.jobs"] == [
        f"job {bad.id}: its stored record cannot be read, so it is skipped; its row is left untouched "
        f"in {tmp_path / 'jobs.sqlite3'}"
    ]
    reopened.close()
    with sqlite3.connect(tmp_path / "jobs.sqlite3") as db:
        assert db.execute("SELECT record FROM jobs WHERE id = ?", (bad.id,)).fetchone() == (b"\xff\xff\xff",)


def test_a_job_store_that_cannot_be_opened_is_a_start_up_error(tmp_path: Path) -> None:
    """A jobs.sqlite3 sqlite cannot open (here a folder) stops start-up naming it and --state-dir."""
    (tmp_path / "jobs.sqlite3").mkdir()
    with pytest.raises(StartupError) as refused:
        JobStore(tmp_path)
    assert str(refused.value) == (
        f"cannot open the job store {tmp_path / 'jobs.sqlite3'} (unable to open database file); "
        "check its permissions, or choose another --state-dir"
    )


def test_a_retry_of_an_unreadable_job_is_refused_naming_it(tmp_path: Path, spec) -> None:
    """A request id whose job was skipped as unreadable gets an INVALID_ARGUMENT, not a crash."""
    spec.request_id = "req-bad"
    store = JobStore(tmp_path)
    bad, _ = store.create(spec)
    store.close()
    with sqlite3.connect(tmp_path / "jobs.sqlite3") as db:
        db.execute("UPDATE jobs SET record = ? WHERE id = ?", (b"\xff\xff\xff", bad.id))
    with pytest.raises(InvalidRequest, match=f"request_id: 'req-bad' was used for job {bad.id}, whose"):
        JobStore(tmp_path).create(spec)


def test_a_long_unknown_job_id_is_quoted_short(tmp_path: Path) -> None:
    """NOT_FOUND for a 5000-character id quotes its first 64 characters and its length, not all of it."""
    with pytest.raises(JobNotFound) as caught:
        JobStore(tmp_path).get("a" * 4990 + "0123456789")
    assert caught.value.message == (
        f"job {'a' * 64!r}... (5000 characters) not found; `gradfleet list` shows the known jobs"
    )
    assert caught.value.job_id.endswith("0123456789")  # the exception keeps the whole id
    with pytest.raises(JobNotFound, match=r"^job 'abc' not found;"):
        JobStore(tmp_path).get("abc")


def test_plural_and_clause_make_job_sentences() -> None:
    """One worker, two workers; a cause's final full stop goes before "; ...", an ellipsis stays."""
    assert (plural(1, "worker"), plural(2, "worker")) == ("1 worker", "2 workers")
    assert plural(0, "rollback") == "0 rollbacks"
    assert clause(RuntimeError("before finishing this task. ")) == "before finishing this task"
    assert clause("a shortened line...") == "a shortened line..."


def test_fault_policy_messages_count_in_the_singular() -> None:
    """One replacement or rollback reads "1 replacement" / "1 rollback", and a cause's stop is not doubled."""
    policy = FaultPolicy(max_restarts=1, rollback_on_divergence=True, max_rollbacks=1, lr_factor=0.5)
    policy.actor_died("worker 0 (pid 7)", 3, 1, WorkerLost("gone"))
    with pytest.raises(WorkerLost) as lost:
        policy.actor_died("worker 0 (pid 7)", 5, 1, WorkerLost("ActorDiedError: before finishing this task."))
    assert str(lost.value) == (
        "worker 0 (pid 7) died at step 5 (epoch 1): ActorDiedError: before finishing this task; "
        "gave up after 1 replacement (max_worker_restarts)"
    )
    policy.diverged("loss became NaN", None)
    with pytest.raises(TrainingFailed, match=r"^loss became NaN; tried 1 rollback$"):
        policy.diverged("loss became NaN", None)


def test_a_replaced_worker_note_has_one_stop(tmp_path: Path, spec) -> None:
    """The note after a worker is replaced joins Ray's sentence with "; " and no stray full stop."""
    runner = _runner(tmp_path, spec)
    runner._setup.epoch_of = lambda step: 1
    runner._faults.parts.actors = SimpleNamespace(
        ps_call=lambda method: None,
        dead_workers=lambda: [1],
        group=SimpleNamespace(pids={1: 42}),
        replace=lambda dead, what, on_retry: None,
    )
    cause = WorkerLost("ActorDiedError: The actor died unexpectedly before finishing this task.")
    runner._faults.replace_workers(cause, 7, runner._setup, runner._policy)
    assert runner.store.get(runner.job_id).message == (
        "worker 1 (pid 42) died at step 7: ActorDiedError: The actor died unexpectedly before finishing "
        "this task; replaced, the step is redone"
    )


def test_scaling_to_one_worker_says_worker(tmp_path: Path, spec) -> None:
    """Scaling 2 -> 1, running or before the start, says "to 1 worker"."""
    spec.num_workers = 2
    runner = _runner(tmp_path, spec)
    reservation = SimpleNamespace(shrink_to=lambda size: None)
    scaling = runner._scaling
    scaling.parts.cpus = SimpleNamespace(room_for=lambda target: True, reservation=reservation)
    scaling.parts.actors = SimpleNamespace(
        ps_call=lambda method: None, stop=lambda: None, start=lambda *args: None
    )
    scaling.parts.writer = SimpleNamespace(queued_step=30)
    scaling.checkpoint_of = lambda state: SimpleNamespace(step=30)
    runner._scale.set(1)
    scaling.scale_if_asked(runner._setup, train_call_ahead=False)
    assert runner.store.get(runner.job_id).message == "scaled from 2 to 1 worker at step 30"

    waiting = with_defaults(small_spec("npz:blobs.npz", numWorkers=2))
    store = JobStore(tmp_path / "other")
    job, _ = store.create(waiting)
    scale = ScaleRequest()
    scale.set(1)
    cpus = WorkerCPUs(job.id, store, ServerConfig(state_dir=tmp_path), scale, lambda: None)
    assert cpus._take_scale(waiting)
    assert store.get(job.id).message == "scaled from 2 to 1 worker before starting"
