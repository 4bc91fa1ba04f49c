"""Faults that really kill processes, inside a real coordinator on a real local Ray."""

from __future__ import annotations

import os
import signal
import time
import urllib.request

import numpy as np
import pytest
import ray

from gradfleet.v1 import coordinator_pb2 as pb
from service.progress import format_job
from tests.helpers import assert_identical, reference_weights, small_spec, wait_for, write_blobs
from tests.helpers import model_weights as weights

pytestmark = [pytest.mark.integration, pytest.mark.ray]

N_TRAIN = 1000  # 20 steps per epoch at batch 50
KILL_NOTICED_WITHIN_S = 15.0  # from SIGKILL to the replacement recorded (the RECOVERED event)


def recovery_spec(**overrides) -> pb.JobSpec:
    values = {"epochs": 15, "checkpointEverySteps": 25} | overrides
    return small_spec("npz:blobs.npz", **values)


def wait_for_step(client, job_id: str, step: int, timeout_s: float = 120.0) -> pb.Job:
    deadline = time.monotonic() + timeout_s
    while (job := client.get(job_id)).progress.step < step:
        assert job.state in (pb.QUEUED, pb.RUNNING), job.message
        assert time.monotonic() < deadline, f"job never reached step {step}: {job}"
        time.sleep(0.02)
    return job


def metrics_text(coordinator) -> str:
    url = f"http://127.0.0.1:{coordinator.metrics_port}/metrics"
    return urllib.request.urlopen(url, timeout=5).read().decode()


def kill_actor(coordinator, job_id: str, name: str) -> int:
    pid = coordinator.scheduler.runner(job_id).actor_pids()[name]
    os.kill(pid, signal.SIGKILL)
    return pid


@pytest.fixture
def blobs(coordinator) -> None:
    write_blobs(coordinator.config.data_root / "blobs.npz", n_train=N_TRAIN)


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["worker-1", "parameter-server"])
def test_a_killed_actor_is_replaced_and_the_weights_are_bit_identical(
    client, coordinator, blobs, tmp_path, victim
) -> None:
    """SIGKILL of a worker or the parameter server mid-job: the job replaces it within a bounded time
    and ends with exactly the weights of an uninterrupted run, with exact step and sample counters.
    A worker counts as a worker replacement, the parameter server as a server restart, in the job
    and in the metrics alike."""
    spec = recovery_spec()
    job = client.submit(spec)
    wait_for_step(client, job.id, 60)
    kill_actor(coordinator, job.id, victim)
    killed_at = time.monotonic()
    while not (p := client.get(job.id).progress).worker_restarts and not p.server_restarts:
        assert time.monotonic() - killed_at < KILL_NOTICED_WITHIN_S, "the kill was not noticed in time"
        time.sleep(0.02)
    done = wait_for(client, job.id)
    assert done.state == pb.SUCCEEDED, done.message
    workers, servers = (1, 0) if victim == "worker-1" else (0, 1)
    assert (done.progress.worker_restarts, done.progress.server_restarts) == (workers, servers)
    assert done.progress.step == done.progress.total_steps == 15 * 20
    assert done.progress.samples_trained == 15 * N_TRAIN  # redone steps are not counted twice
    got = weights(client, job.id, tmp_path / "killed.npz")
    reference = reference_weights(client, spec, coordinator.config.data_root / "blobs.npz", tmp_path)
    assert_identical(got, reference)
    text = metrics_text(coordinator)
    assert f"gradfleet_worker_replacements_total {workers}.0" in text
    assert f"gradfleet_server_restarts_total {servers}.0" in text
    shown = "2 (1 replaced after failures)" if workers else "2 (parameter server restarted 1 time)"
    assert workers_row(done) == shown


def workers_row(job: pb.Job) -> str:
    """The value of `gradfleet get`'s workers row."""
    return (
        next(line for line in format_job(job).splitlines() if line.startswith("workers:"))
        .split(":", 1)[1]
        .strip()
    )


def kill_both_workers(coordinator, job_id: str) -> list[int]:
    """SIGKILL both workers of a 2-worker job back to back, as `kill -9 PID PID` does."""
    pids = coordinator.scheduler.runner(job_id).actor_pids()
    victims = [pids["worker-0"], pids["worker-1"]]
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    return victims


@pytest.mark.slow
def test_two_workers_killed_at_once_count_as_two_replacements_everywhere(client, coordinator, blobs) -> None:
    """Both workers of a 2-worker job SIGKILLed at once: two worker actors were replaced, and the job
    (worker_restarts, `gradfleet get`) and the metric say 2, with no parameter-server restart."""
    job = client.submit(recovery_spec(epochs=6))
    wait_for_step(client, job.id, 30)
    kill_both_workers(coordinator, job.id)
    done = wait_for(client, job.id)
    assert done.state == pb.SUCCEEDED, done.message
    assert (done.progress.worker_restarts, done.progress.server_restarts) == (2, 0)
    assert workers_row(done) == "2 (2 replaced after failures)"
    text = metrics_text(coordinator)
    assert "gradfleet_worker_replacements_total 2.0" in text
    assert "gradfleet_server_restarts_total 0.0" in text


@pytest.mark.slow
def test_two_workers_dead_at_once_exceed_max_worker_restarts_1(client, coordinator, blobs) -> None:
    """max_worker_restarts 1 allows one dead worker to be replaced: two that die at once fail the job,
    naming them and the limit, instead of both being replaced."""
    job = client.submit(recovery_spec(epochs=200, maxWorkerRestarts=1))
    wait_for_step(client, job.id, 10)
    victims = kill_both_workers(coordinator, job.id)
    done = wait_for(client, job.id, timeout_s=120)
    assert done.state == pb.FAILED, done.message
    assert f"(pid {victims[0]})" in done.message or f"(pid {victims[1]})" in done.message
    assert "(max_worker_restarts)" in done.message
    assert done.progress.worker_restarts <= 1
    assert "gradfleet_worker_replacements_total 2.0" not in metrics_text(coordinator)


def test_a_worker_killed_as_the_evaluation_goes_out_is_replaced_and_the_weights_are_identical(
    client, coordinator, blobs, tmp_path, monkeypatch
) -> None:
    """The runner sends the evaluation with the next train call behind it; a worker that dies just
    then fails both. The worker is replaced, the evaluation redone, and the job ends with exactly
    the weights and counters of an uninterrupted run."""
    from service.job_actors import JobActors

    start, killed = JobActors.ps_start, []

    def kill_before_the_first_evaluation(actors, method, *args):
        if method == "evaluate" and not killed:
            killed.append(actors.group.pids[1])
            os.kill(killed[0], signal.SIGKILL)
            while os.path.exists(f"/proc/{killed[0]}") and _alive(killed[0]):
                time.sleep(0.01)
        return start(actors, method, *args)

    monkeypatch.setattr(JobActors, "ps_start", kill_before_the_first_evaluation)
    spec = recovery_spec(epochs=3)
    done = wait_for(client, client.submit(spec).id)
    assert killed, "no evaluation was sent"
    assert done.state == pb.SUCCEEDED, done.message
    assert done.progress.worker_restarts == 1
    assert done.progress.samples_trained == 3 * N_TRAIN
    monkeypatch.setattr(JobActors, "ps_start", start)
    reference = reference_weights(client, spec, coordinator.config.data_root / "blobs.npz", tmp_path)
    assert_identical(weights(client, done.id, tmp_path / "killed.npz"), reference)


def _alive(pid: int) -> bool:
    """Whether `pid` still runs (a zombie, killed but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.slow
def test_a_worker_that_keeps_dying_fails_the_job_naming_it(client, coordinator, blobs) -> None:
    """With max_worker_restarts 1, a second worker death fails the job with the worker, step and cause."""
    job = client.submit(recovery_spec(epochs=200, maxWorkerRestarts=1))
    wait_for_step(client, job.id, 10)
    kill_actor(coordinator, job.id, "worker-0")
    deadline = time.monotonic() + 120
    while client.get(job.id).progress.worker_restarts < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    step = client.get(job.id).progress.step
    wait_for_step(client, job.id, step + 5)
    pid = kill_actor(coordinator, job.id, "worker-0")
    done = wait_for(client, job.id, timeout_s=120)
    assert done.state == pb.FAILED
    assert f"worker 0 (pid {pid}) died at step " in done.message
    assert "ActorDiedError" in done.message or "RayChannelError" in done.message
    assert "gave up after 1 replacement (max_worker_restarts)" in done.message


@pytest.mark.slow
def test_divergence_rolls_back_with_a_lower_learning_rate(client, coordinator, blobs) -> None:
    """An exploding SGD run rolls back to its initial weights with the rate scaled down, reports a
    ROLLBACK event and metric, and then trains to the end."""
    spec = recovery_spec(
        epochs=2,
        optimizer={"kind": "SGD", "learningRate": 1e30},
        onDivergence="ROLLBACK",
        rollbackLrFactor=1e-31,
        maxRollbacks=2,
    )
    start = time.monotonic()
    job = client.submit(spec)
    events = list(client.watch(job.id))
    done = events[-1].job
    assert time.monotonic() - start < 60  # no stalled worker after the rollback (step timeout 120 s)
    assert done.state == pb.SUCCEEDED, done.message
    assert done.progress.rollbacks == 1
    assert done.progress.learning_rate == pytest.approx(0.1)
    rollbacks = [e for e in events if e.kind == pb.JobEvent.ROLLBACK]
    assert len(rollbacks) == 1
    assert "rolled back to the initial weights" in rollbacks[0].job.message
    assert "became" in rollbacks[0].job.message
    assert "gradfleet_divergence_rollbacks_total 1.0" in metrics_text(coordinator)


def test_divergence_fails_the_job_by_default(client, blobs) -> None:
    """Without on_divergence, a non-finite loss fails the job naming the epoch, step and learning rate."""
    spec = recovery_spec(epochs=2, optimizer={"kind": "SGD", "learningRate": 1e30})
    done = wait_for(client, client.submit(spec).id, timeout_s=120)
    assert done.state == pb.FAILED
    assert "became" in done.message and "at epoch 1 step " in done.message
    assert "(learning rate 1e+30); lower the learning rate or enable clipping" in done.message


def test_a_checkpoint_is_written_at_each_epoch_end(client, blobs) -> None:
    """With checkpoint_every_steps 7 and 20 steps per epoch, checkpoints come every 7 steps and at
    the end of every epoch but the last (where the final model is written instead). Once the job
    succeeded they are removed, and its checkpoint_step says there is none."""
    job = client.submit(recovery_spec(epochs=3, checkpointEverySteps=7))
    events = list(client.watch(job.id))
    assert events[-1].job.state == pb.SUCCEEDED, events[-1].job.message
    steps = [e.job.progress.checkpoint_step for e in events if e.kind == pb.JobEvent.CHECKPOINT]
    assert steps == [7, 14, 20, 21, 28, 35, 40, 42, 49, 56]
    assert events[-1].job.progress.checkpoint_step == 0  # removed: the final model supersedes them


def test_a_running_job_downloads_its_latest_checkpoint(client, blobs, tmp_path) -> None:
    """A running job's download serves the weights of its latest checkpoint."""
    job = client.submit(recovery_spec(epochs=1000, checkpointEverySteps=10))
    deadline = time.monotonic() + 120
    while (running := client.get(job.id)).progress.checkpoint_step == 0:
        assert time.monotonic() < deadline, running
        time.sleep(0.05)
    model = weights(client, job.id, tmp_path / "running.npz")
    assert model["layer_0_weight"].shape == (20, 16) and np.isfinite(model["layer_0_weight"]).all()
    client.cancel(job.id)
    assert wait_for(client, job.id, timeout_s=30).state == pb.CANCELLED
    assert weights(client, job.id, tmp_path / "cancelled.npz").keys() == model.keys()


def test_a_retried_submit_returns_the_same_job(client, blobs) -> None:
    """Two SubmitJob calls with the same request id create one job and return its id twice."""
    spec = recovery_spec(epochs=1, requestId="retry-me")
    first = client.submit(spec)
    second = client.submit(spec)
    assert first.id == second.id
    assert [j.id for j in client.list()] == [first.id]
    assert wait_for(client, first.id).state == pb.SUCCEEDED


def kill_and_wait(pid: int) -> None:
    """SIGKILL `pid` and wait until it is gone."""
    os.kill(pid, signal.SIGKILL)
    while _alive(pid):
        time.sleep(0.01)


def test_a_worker_killed_as_the_job_first_starts_is_retried_like_one_killed_later(
    client, coordinator, blobs, tmp_path, monkeypatch
) -> None:
    """A worker SIGKILLed as soon as it came up, before the job's first step: the start is tried again
    and counted against max_worker_restarts, as the same death a moment later would be, and the job
    ends with the weights of an undisturbed run (it used to fail at once)."""
    from workers import group

    wait_started, killed = group._wait_started, []

    def kill_the_first_worker(actors, timeout_s, on_wait):
        if not killed:
            killed.append(ray.get(actors[0].pid.remote(), timeout=60))
            kill_and_wait(killed[0])
        return wait_started(actors, timeout_s, on_wait)

    monkeypatch.setattr(group, "_wait_started", kill_the_first_worker)
    spec = recovery_spec(epochs=2)
    events = list(client.watch(client.submit(spec).id))
    done = events[-1].job
    assert killed and done.state == pb.SUCCEEDED, done.message
    assert (done.progress.worker_restarts, done.progress.server_restarts) == (0, 1)
    recovered = [e.job.message for e in events if e.kind == pb.JobEvent.RECOVERED]
    assert len(recovered) == 1 and "new workers did not start: ActorDiedError" in recovered[0], recovered
    assert recovered[0].endswith("; restarted from the initial weights")
    assert "gradfleet_server_restarts_total 1.0" in metrics_text(coordinator)
    monkeypatch.setattr(group, "_wait_started", wait_started)
    reference = reference_weights(client, spec, coordinator.config.data_root / "blobs.npz", tmp_path)
    assert_identical(weights(client, done.id, tmp_path / "killed.npz"), reference)


def test_a_parameter_server_killed_before_its_epoch_end_evaluation_evaluates_after_its_restart(
    client, coordinator, blobs, monkeypatch
) -> None:
    """The parameter server dies after the checkpoint at the first epoch end and before that step's
    evaluation: it restarts from that checkpoint and evaluates there first, as a coordinator restart
    does, so no epoch lacks its evaluation."""
    from service.job_actors import JobActors

    start, checkpoint_states, killed = JobActors.ps_start, [], []

    def kill_before_the_first_evaluation(actors, method, *args):
        if method == "evaluate" and not killed:
            ray.get(
                checkpoint_states[-1], timeout=60
            )  # the checkpoint's state is out: the kill falls after it
            killed.append(ray.get(actors.ps.pid.remote(), timeout=60))
            kill_and_wait(killed[0])
        ref = start(actors, method, *args)
        if method == "state":
            checkpoint_states.append(ref)
        return ref

    monkeypatch.setattr(JobActors, "ps_start", kill_before_the_first_evaluation)
    events = list(client.watch(client.submit(recovery_spec(epochs=3, checkpointEverySteps=0)).id))
    done = events[-1].job
    assert killed and done.state == pb.SUCCEEDED, done.message
    assert done.progress.server_restarts == 1
    recovered = [e.job.message for e in events if e.kind == pb.JobEvent.RECOVERED]
    assert len(recovered) == 1 and recovered[0].endswith("restarted from the checkpoint at step 20"), (
        recovered
    )
    assert [e.job.progress.step for e in events if e.kind == pb.JobEvent.EVAL] == [20, 40, 60]
