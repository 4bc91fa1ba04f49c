"""Scaling: samples/s and the per-step time split for 1, 2 and 4 workers at global batch 256 and 1024,
on one machine (one Ray node) and on a two-node cluster on this machine (ray.cluster_utils: two raylets),
with the single-process engine (2 BLAS threads) as the reference measured in the same run.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python bench/scaling.py [--steps 300]

On a 2-core machine 4 workers share 2 cores, so the 4-worker rows show coordination cost, not speed-up.
Run as root, it re-runs itself inside a loopback-only network namespace (Ray would otherwise bind the
machine's interface address), so the clusters' traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
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


def measure(address: str | None, label: str, batches: list[int], workers: list[int], steps: int) -> list:
    from service.client import CoordinatorClient
    from service.config import ServerConfig
    from service.server import start_server

    config = ServerConfig(
        port=0, metrics_port=-1, state_dir=Path(tempfile.mkdtemp()), ray_address=address, ray_num_cpus=4
    )
    running = start_server(config)
    rows = []
    try:
        with CoordinatorClient(running.address) as client:
            client.wait_ready(timeout=60)
            service_run(client, running, 256, 200, 2, 2)  # warm-up
            for batch in batches:
                for n in workers:
                    run = service_run(client, running, batch, steps, n, n)
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


def main() -> None:
    rerun_in_loopback_namespace()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batches", default="256,1024")
    parser.add_argument("--workers", default="1,2,4")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    workers = [int(w) for w in args.workers.split(",")]
    print(f"command: {' '.join(shlex.quote(a) for a in sys.argv)}")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    data = load_dataset("fashion-mnist", ROOT / "data")
    reference = {
        b: statistics.median(
            engine_samples_per_second(data.x_train, data.y_train, b, 100, 2) for _ in range(3)
        )
        for b in batches
    }
    rows = measure(None, "one node", batches, workers, args.steps)

    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    for _ in range(2):
        cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    try:
        rows += measure(cluster.address, "two nodes (loopback)", batches, workers, args.steps)
    finally:
        ray.shutdown()
        cluster.shutdown()
    print()
    header = f"{'cluster':<22} {'batch':>6} {'workers':>7} {'samples/s':>10}"
    print(header + "  vs engine  ms/step compute/reduce/apply/wait")
    for label, batch, n, rate, split in rows:
        parts = " / ".join(f"{split[p]:.2f}" for p in PHASES)
        print(f"{label:<22} {batch:>6} {n:>7} {rate:>10,.0f}  {rate / reference[batch]:>8.2f}x  {parts}")
    for batch, rate in reference.items():
        print(f"engine alone, 1 process, 2 BLAS threads, batch {batch}: {rate:,.0f} samples/s")


if __name__ == "__main__":
    main()
