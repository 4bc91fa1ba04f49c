"""Scaling: samples/s and the per-step time split for 1, 2 and 4 workers at global batch 256 and 1024,
on one machine (one Ray node) and on a two-node cluster on this machine (ray.cluster_utils: two raylets),
with the single-process engine (2 BLAS threads) as the reference measured in the same run.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python bench/scaling.py [--steps 300] [--quick]

`--quick` (a smoke run, tests/test_bench_scaling.py): batch 256, 1 and 2 workers, one node, no warm-up
job, and as many steps as the engine trains in 1.5 s (the service reports progress every 0.5 s and is
slower than the engine, so each run spans the several reports a measurement needs).

On a 2-core machine 4 workers share 2 cores, so the 4-worker rows show coordination cost, not speed-up.
Run as root, it re-runs itself inside a loopback-only network namespace (Ray would otherwise bind the
machine's interface address), so the clusters' traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.e2e import PHASES, engine_samples_per_second, service_run  # noqa: E402
from service.datasets import load_dataset  # noqa: E402

QUICK_SECONDS = 1.5  # --quick trains each run for about this long at the engine's rate


def measure(
    address: str | None, label: str, steps: dict[int, int], workers: list[int], warm_up_steps: int
) -> list:
    """Rows (label, batch, workers, samples/s, ms per step by phase) for each batch in `steps` (batch ->
    steps to train) and worker count, through a coordinator on the Ray at `address` (None: embedded)."""
    from service.client import CoordinatorClient
    from service.config import ServerConfig
    from service.server import start_server

    with tempfile.TemporaryDirectory(prefix="gradfleet-scaling-") as state:
        config = ServerConfig(
            port=0, metrics_port=-1, state_dir=Path(state), ray_address=address, ray_num_cpus=4
        )
        running = start_server(config)
        rows = []
        try:
            with CoordinatorClient(running.address) as client:
                client.wait_ready(timeout=60)
                if warm_up_steps:  # worker start, imports, data cache
                    service_run(client, running, 256, warm_up_steps, 2, 2)
                for batch, batch_steps in steps.items():
                    for n in workers:
                        run = service_run(client, running, batch, batch_steps, n, n)
                        rows.append((label, batch, n, run["samples_per_second"], run["ms_per_step"]))
                        print_row(rows[-1], flush=True)
        finally:
            running.stop(grace_s=1)
    return rows


def print_row(row, flush: bool = False) -> None:
    label, batch, n, rate, split = row
    parts = " / ".join(f"{split[p]:.2f}" for p in PHASES)
    print(f"{label:<22} {batch:>6} {n:>7} {rate:>10,.0f}  {parts}", flush=flush)


def rerun_in_loopback_namespace() -> None:
    """Run this script again inside a fresh loopback-only namespace and exit with its status."""
    from tests.netns import loopback_namespace, why_unavailable

    if os.environ.get("GRADFLEET_IN_NETNS") or (reason := why_unavailable()):
        if not os.environ.get("GRADFLEET_IN_NETNS"):
            print(f"note: not isolating the clusters in a network namespace ({reason})")
        return
    with loopback_namespace() as inside:
        env = {**os.environ, "GRADFLEET_IN_NETNS": "1"}
        code = subprocess.run([*inside, sys.executable, *sys.argv], env=env).returncode
    raise SystemExit(code)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batches", default="256,1024")
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few steps, one batch, one node")
    args = parser.parse_args()
    if args.quick:
        args.batches, args.workers = "256", "1,2"
    args.batches = [int(b) for b in args.batches.split(",")]
    args.workers = [int(w) for w in args.workers.split(",")]
    return args


def two_node_rows(steps: dict[int, int], workers: list[int], warm_up_steps: int) -> list:
    """The same runs on a cluster of two 2-CPU worker nodes and a head without CPUs, on this machine."""
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    for _ in range(2):
        cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    try:
        return measure(cluster.address, "two nodes (loopback)", steps, workers, warm_up_steps)
    finally:
        ray.shutdown()
        cluster.shutdown()


def print_table(rows: list, reference: dict[int, float]) -> None:
    print()
    header = f"{'cluster':<22} {'batch':>6} {'workers':>7} {'samples/s':>10}"
    print(header + "  vs engine  ms/step compute/reduce/apply/wait")
    for label, batch, n, rate, split in rows:
        parts = " / ".join(f"{split[p]:.2f}" for p in PHASES)
        print(f"{label:<22} {batch:>6} {n:>7} {rate:>10,.0f}  {rate / reference[batch]:>8.2f}x  {parts}")
    for batch, rate in reference.items():
        print(f"engine alone, 1 process, 2 BLAS threads, batch {batch}: {rate:,.0f} samples/s")


def main() -> None:
    rerun_in_loopback_namespace()
    args = parse_args()
    print(f"command: {' '.join(shlex.quote(a) for a in sys.argv)}")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    data = load_dataset("fashion-mnist", ROOT / "data")
    engine_steps, repeats, warm_up_steps = (20, 1, 0) if args.quick else (100, 3, 200)
    reference = {
        b: statistics.median(
            engine_samples_per_second(data.x_train, data.y_train, b, engine_steps, 2) for _ in range(repeats)
        )
        for b in args.batches
    }
    steps = {
        b: math.ceil(QUICK_SECONDS * reference[b] / b) if args.quick else args.steps for b in args.batches
    }
    rows = measure(None, "one node", steps, args.workers, warm_up_steps)
    if args.quick:
        print("--quick: two-node cluster rows left out")
    else:
        rows += two_node_rows(steps, args.workers, warm_up_steps)
    print_table(rows, reference)


if __name__ == "__main__":
    main()
