"""End-to-end throughput: the engine alone in one process versus training through the service.

Trains the example's model (784-256-128-10, Adam) on Fashion-MNIST for a fixed number of samples:
  (a) in one process with the engine alone (no Ray), with 1 and 2 BLAS threads;
  (b) through the service (gRPC submit, Ray workers, parameter-server actor) with 1 and 2 workers,
      with micro-shards equal to the worker count and with the default (one per 64 samples).
Prints samples/s, the ratio to the 2-thread engine, and the service's per-step time split into
compute, gradient reduction, optimizer apply and wait (transfer + scheduling), from its metrics.

Run on a quiet machine, with the BLAS kernel the hardware deserves:
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python bench/e2e.py [--samples 300000]
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gradfleet.v1 import coordinator_pb2 as pb  # noqa: E402
from service.datasets import load_dataset  # noqa: E402
from service.spec import load_spec_file  # noqa: E402
from service.spec_defaults import with_defaults  # noqa: E402
from workers.batches import batch_indices, epoch_permutation  # noqa: E402
from workers.nn import Network, make_optimizer  # noqa: E402

PHASES = ("compute", "reduce", "apply", "wait")


def engine_samples_per_second(x: np.ndarray, y: np.ndarray, batch: int, steps: int, threads: int) -> float:
    """The single-process reference: the same model, one loss_and_grad call per global batch, Adam."""
    net = Network([784, 256, 128, 10], ["relu", "relu", "identity"], "softmax_cross_entropy")
    params = net.init_params(np.random.default_rng(1))
    grad = np.empty_like(params)
    opt = make_optimizer("adam", net.num_params, np.float32)
    per_epoch = len(y) // batch
    with threadpool_limits(threads, user_api="blas"):
        order = epoch_permutation(1, 1, len(y))
        for warm in range(5):
            idx = batch_indices(order, warm, batch)
            net.loss_and_grad(params, x[idx], y[idx], grad)
        start = time.perf_counter()
        for step in range(steps):
            if step % per_epoch == 0:
                order = epoch_permutation(1, 1 + step // per_epoch, len(y))
            idx = batch_indices(order, step % per_epoch, batch)
            xb = x[idx].astype(np.float32) * np.float32(1 / 255)  # same preprocessing work as a worker
            net.loss_and_grad(params, xb, y[idx], grad)
            grad *= np.float32(1 / len(idx))
            opt.step(params, grad, 1e-3)
        return steps * batch / (time.perf_counter() - start)


def service_run(
    client, running, batch: int, steps: int, workers: int, shards: int | None, measure: bool = True
) -> dict:
    """Train `steps` steps through the service; measure from the second progress report to the last,
    so worker start-up, the graph's first (compiling) steps and the final evaluation are left out.
    Rates use the coordinator's timestamps on the reports: WatchJob sends them at most once a second."""
    spec = with_defaults(load_spec_file(ROOT / "examples" / "fashion_mnist.yaml"))
    spec.batch_size, spec.num_workers = batch, workers
    spec.epochs = max(1, -(-steps * batch // 60000))
    spec.dataset.max_train_samples = min(60000, steps * batch)
    spec.dataset.max_test_samples = 1000
    spec.ClearField("micro_shards")
    if shards:
        spec.micro_shards = shards
    spec = with_defaults(spec)
    job = client.submit(spec)
    label = {"job_id": job.id}
    reg = running.metrics.registry

    def phase_totals() -> tuple[dict, float]:
        sums = {
            p: reg.get_sample_value("gradfleet_job_step_phase_seconds_sum", {**label, "phase": p})
            for p in PHASES
        }
        return sums, reg.get_sample_value("gradfleet_job_step_seconds_count", label)

    reports = []  # (coordinator time in s, samples trained, phase totals) of each report
    last_step = 0
    for event in client.watch(job.id):
        progress = event.job.progress
        # Any event carries the progress (WatchJob leaves out a PROGRESS event a later one supersedes).
        if progress.step > last_step and event.job.state == pb.RUNNING:
            last_step = progress.step
            reports.append((event.time.ToNanoseconds() / 1e9, progress.samples_trained, phase_totals()))
        if event.job.state in (pb.SUCCEEDED, pb.FAILED, pb.CANCELLED):
            break
    done = client.get(job.id)
    if done.state != pb.SUCCEEDED:
        raise SystemExit(f"benchmark job {done.id} did not succeed: {done.message}")
    if not measure:
        return {}
    if len(reports) < 3:
        raise SystemExit(
            f"job {done.id} sent {len(reports)} progress reports, 3 are needed; use more --samples"
        )
    (t0, n0, (sums0, count0)), (t1, n1, (sums1, count1)) = reports[1], reports[-1]
    return {
        "samples_per_second": (n1 - n0) / (t1 - t0),
        "ms_per_step": {p: 1e3 * (sums1[p] - sums0[p]) / (count1 - count0) for p in PHASES},
        "shards": spec.micro_shards,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--samples", type=int, default=300_000, help="samples trained per measurement (5 epochs' worth)"
    )
    parser.add_argument("--batches", default="256,512,1024", help="global batch sizes")
    parser.add_argument("--repeats", type=int, default=3, help="engine runs per setting (median)")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    blas = [
        f"{i.get('internal_api')}:{i.get('architecture')}"
        for i in threadpool_info()
        if i["user_api"] == "blas"
    ]
    print(f"command: {' '.join(shlex.quote(a) for a in sys.argv)}")
    print(f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}  BLAS kernel: {blas}")
    data = load_dataset("fashion-mnist", ROOT / "data")
    x, y = data.x_train, data.y_train

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from service.client import CoordinatorClient
    from service.config import ServerConfig
    from service.server import start_server

    state = Path(tempfile.mkdtemp(prefix="gradfleet-bench-"))
    running = start_server(ServerConfig(port=0, metrics_port=-1, state_dir=state, ray_num_cpus=2))
    rows = []
    try:
        with CoordinatorClient(running.address) as client:
            client.wait_ready(timeout=60)
            # Warm-up: worker start, imports, the data cache.
            service_run(client, running, 256, 200, 2, 2, measure=False)
            for batch in batches:
                steps = max(1, args.samples // batch)
                ref = {
                    t: statistics.median(
                        engine_samples_per_second(x, y, batch, steps, t) for _ in range(args.repeats)
                    )
                    for t in (1, 2)
                }
                rows.append((batch, "engine, 1 process, 1 BLAS thread", ref[1], None, ref[2]))
                rows.append((batch, "engine, 1 process, 2 BLAS threads", ref[2], None, ref[2]))
                for workers in (1, 2):
                    for shards in (workers, None):
                        run = service_run(client, running, batch, steps, workers, shards)
                        name = f"service, {workers} worker(s), {run['shards']} micro-shards"
                        rows.append((batch, name, run["samples_per_second"], run["ms_per_step"], ref[2]))
                        print_row(rows[-1], flush=True)
    finally:
        running.stop(grace_s=1)
    print()
    print(
        f"{'batch':>6}  {'setting':<44} {'samples/s':>10} {'vs engine 2t':>12}  "
        "ms/step compute/reduce/apply/wait"
    )
    for row in rows:
        print_row(row)


def print_row(row, flush: bool = False) -> None:
    batch, name, rate, split, ref = row
    parts = "" if split is None else " / ".join(f"{split[p]:.2f}" for p in PHASES)
    print(f"{batch:>6}  {name:<44} {rate:>10,.0f} {rate / ref:>11.2f}x  {parts}", flush=flush)


if __name__ == "__main__":
    main()
