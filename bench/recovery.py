"""Recovery benchmark: what faults and checkpoints cost.

1. worker kill -> next applied step: a GradientWorker is SIGKILLed mid-job in an in-process
   coordinator; the time until the first step applied after the replacement.
2. coordinator restart -> next applied step: a `gradfleet serve` process is SIGKILLed mid-job and
   started again on the same --state-dir; the time from the new process's start to the first step
   applied after resuming (includes starting Ray and loading the data).
3. checkpoint cost: the same 1-epoch job with checkpoint_every_steps=100 and with no checkpoints;
   the ratio of their throughputs (median of --repeats runs each).

Usage: python bench/recovery.py [--quick]   (--quick: less data, 2 repeats instead of 5; a smoke run)
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from gradfleet.v1 import coordinator_pb2 as pb  # noqa: E402
from service.spec import spec_from_dict  # noqa: E402
from tests.helpers import ServeProcess, wait_for, write_blobs  # noqa: E402


def job_spec(n_train: int, epochs: int, checkpoint_every: int, features: int = 784) -> pb.JobSpec:
    return spec_from_dict(
        {
            "name": "bench-recovery",
            "dataset": {"uri": "npz:bench.npz", "preprocessing": "STANDARDIZE", "maxTrainSamples": n_train},
            "layers": [{"units": 256}, {"units": 128}, {"units": 10}],
            "optimizer": {"kind": "ADAM", "learningRate": 0.001},
            "batchSize": 64,
            "epochs": epochs,
            "numWorkers": 2,
            "seed": 1,
            "checkpointEverySteps": checkpoint_every,
        }
    )


def first_step_after(client, job_id: str, after_step: int, start: float, timeout_s: float = 300) -> float:
    """Seconds from `start` until the job reports a step beyond `after_step`."""
    deadline = time.monotonic() + timeout_s
    while client.get(job_id).progress.step <= after_step:
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} made no progress past step {after_step}")
        time.sleep(0.005)
    return time.monotonic() - start


def bench_worker_kill(server, client, n_train: int) -> float:
    job = client.submit(job_spec(n_train, epochs=50, checkpoint_every=100))
    while client.get(job.id).progress.step < 50:
        time.sleep(0.01)
    recovered = threading.Event()
    watcher = threading.Thread(target=_wait_recovered, args=(client, job.id, recovered), daemon=True)
    watcher.start()
    pid = server.scheduler.runner(job.id).actor_pids()["worker-1"]
    start = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    recovered.wait(120)
    step = client.get(job.id).progress.step  # the step redone after the replacement comes next
    seconds = first_step_after(client, job.id, step, start)
    client.cancel(job.id)
    wait_for(client, job.id, timeout_s=60)
    return seconds


def _wait_recovered(client, job_id: str, done: threading.Event) -> None:
    for event in client.watch(job_id):
        if event.kind == pb.JobEvent.RECOVERED:
            done.set()
            return


def bench_checkpoint_cost(client, n_train: int, repeats: int) -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {"every 100 steps": [], "never": []}
    for _ in range(repeats):
        for label, every in (("every 100 steps", 100), ("never", 0)):
            rates[label].append(steady_throughput(client, client.submit(job_spec(n_train, 1, every)).id))
    return rates


def steady_throughput(client, job_id: str) -> float:
    """Samples/s between the first and the last event after training began (start-up and shutdown
    excluded), timed by the server's event stamps; every event carries the job as of its stamp."""
    marks = []
    for event in client.watch(job_id):
        if event.job.progress.step and event.job.state == pb.RUNNING:
            marks.append((event.time.ToNanoseconds() / 1e9, event.job.progress.samples_trained))
        final = event.job
    assert final.state == pb.SUCCEEDED, final.message
    (t0, s0), (t1, s1) = marks[0], marks[-1]
    return (s1 - s0) / (t1 - t0)


def bench_coordinator_restart(work: Path, n_train: int) -> tuple[float, float]:
    """(seconds to the next applied step, of which until the new coordinator answered)."""
    first = ServeProcess(work / "state", work / "data", work / "serve.log")
    job = first.client.submit(job_spec(n_train, epochs=50, checkpoint_every=100))
    while first.client.get(job.id).progress.step < 250:
        time.sleep(0.01)
    first.stop(signal.SIGKILL, 30)
    start = time.monotonic()
    second = ServeProcess(work / "state", work / "data", work / "serve.log")
    ready = time.monotonic() - start
    try:
        # The record still shows the old run's counters until the runner resets them to the checkpoint.
        while not (current := second.client.get(job.id)).message.startswith("resumed from"):
            time.sleep(0.005)
        seconds = first_step_after(second.client, job.id, current.progress.step, start)
        second.client.cancel(job.id)
    finally:
        second.stop(signal.SIGTERM, 60)
    return seconds, ready


def _summary(values: list[float]) -> str:
    return f"median {statistics.median(values):.0f} (min {min(values):.0f}, max {max(values):.0f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="less data, two repeats: a smoke run")
    args = parser.parse_args()
    n_train, repeats = (25600, 2) if args.quick else (60000, 5)
    work = Path(tempfile.mkdtemp(prefix="gradfleet-bench-recovery-"))
    (work / "data").mkdir()
    write_blobs(work / "data" / "bench.npz", n_train=n_train, n_test=256, features=784, classes=10)

    import ray

    from service.client import CoordinatorClient
    from service.config import ServerConfig
    from service.server import start_server

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    config = ServerConfig(port=0, metrics_port=-1, state_dir=work / "inproc", data_root=work / "data")
    server = start_server(config)
    try:
        with CoordinatorClient(server.address) as client:
            kill = bench_worker_kill(server, client, n_train)
            print(f"worker SIGKILL -> next applied step: {kill:.2f} s", flush=True)
            rates = bench_checkpoint_cost(client, n_train, repeats)
    finally:
        server.stop(grace_s=1.0)
        ray.shutdown()
    every, never = statistics.median(rates["every 100 steps"]), statistics.median(rates["never"])
    print(f"throughput, checkpoint every 100 steps: {_summary(rates['every 100 steps'])} samples/s")
    print(f"throughput, no checkpoints:             {_summary(rates['never'])} samples/s")
    print(f"checkpoint cost: {100 * (1 - every / never):.1f}% of throughput", flush=True)
    restart, ready = bench_coordinator_restart(work, n_train)
    print(f"coordinator SIGKILL + restart -> next applied step: {restart:.2f} s (serving at {ready:.2f} s)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
