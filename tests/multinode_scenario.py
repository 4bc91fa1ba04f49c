"""Runs in its own process (it needs a Ray of its own): a coordinator joined to a real multi-node Ray
cluster (ray.cluster_utils.Cluster: a head without CPUs and worker nodes of 2 CPUs each, each its own
raylet). Prints one JSON object of what it saw; tests/test_multinode.py asserts on it."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# A dead node is marked dead after about 4 s instead of 15 (see FACTS.md); every node inherits these.
os.environ.setdefault("RAY_health_check_period_ms", "1000")
os.environ.setdefault("RAY_health_check_failure_threshold", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ray
from ray.cluster_utils import Cluster
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from gradfleet.v1 import coordinator_pb2 as pb
from service.client import CoordinatorClient
from service.config import ServerConfig
from service.server import start_server
from tests.helpers import small_spec, write_blobs

CPUS_PER_NODE = 2  # two per node: a PACK placement of two workers would share one, SPREAD does not


@ray.remote(num_cpus=0)
class CpuHog:
    def ping(self) -> bool:
        return True


def fill_free_cpus(cluster: Cluster, used: list[str], spare: str) -> list:
    """Hog every free CPU of the nodes other than `spare`, given the node of each CPU in use."""
    hogs = []
    for node in cluster.list_all_nodes():
        free = CPUS_PER_NODE - used.count(node.node_id)
        if node.node_id != spare and not node.head and free > 0:
            strategy = NodeAffinitySchedulingStrategy(node.node_id, soft=False)
            hogs.append(CpuHog.options(num_cpus=free, scheduling_strategy=strategy).remote())
    ray.get([h.ping.remote() for h in hogs], timeout=60)
    return hogs


def wait(client: CoordinatorClient, job_id: str, done, timeout_s: float = 120.0) -> pb.Job:
    deadline = time.monotonic() + timeout_s
    while not done(job := client.get(job_id)):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting on job {job_id}: {job}")
        time.sleep(0.1)
    return job


def _same_weights(a: Path, b: Path) -> bool:
    import numpy as np

    with np.load(a) as x, np.load(b) as y:
        names = [n for n in x.files if n.startswith("layer_")]
        return bool(names) and all(np.array_equal(x[n], y[n]) for n in names)


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="gradfleet-multinode-"))
    (folder / "data").mkdir()
    write_blobs(folder / "data" / "blobs.npz", n_train=3000)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    for _ in range(2):
        cluster.add_node(num_cpus=CPUS_PER_NODE)
    cluster.wait_for_nodes()
    config = ServerConfig(
        port=0,
        metrics_port=-1,
        ray_address=cluster.address,
        state_dir=folder / "state",
        data_root=folder / "data",
        autoscaling=True,  # a job larger than the cluster waits for nodes instead of failing
        max_running_jobs=2,
    )
    running = start_server(config)
    seen: dict = {}
    try:
        with CoordinatorClient(running.address) as client:
            spread = client.submit(small_spec("npz:blobs.npz", numWorkers=2, batchSize=10, epochs=20))
            wait(client, spread.id, lambda j: j.progress.step > 0)
            seen["spread_nodes"] = sorted(set(running.scheduler.runner(spread.id)._cpus.reservation.nodes()))
            seen["node_addresses"] = sorted({n["NodeManagerAddress"] for n in ray.nodes()})
            client.cancel(spread.id)
            wait(client, spread.id, lambda j: j.state == pb.CANCELLED)

            big = client.submit(small_spec("npz:blobs.npz", numWorkers=5, epochs=2))
            waiting = wait(client, big.id, lambda j: "waiting for" in j.message)
            seen["waiting"] = {"state": pb.JobState.Name(waiting.state), "message": waiting.message}
            time.sleep(2)
            seen["still_waiting"] = pb.JobState.Name(client.get(big.id).state)
            cluster.add_node(num_cpus=CPUS_PER_NODE)
            done = wait(client, big.id, lambda j: j.state in (pb.SUCCEEDED, pb.FAILED, pb.CANCELLED))
            seen["after_node_added"] = {"state": pb.JobState.Name(done.state), "message": done.message}

            # A node dies mid-job (its raylet is killed, and the worker on it goes): the job notices,
            # waits while every other CPU is taken, replaces the worker once one is free, and ends with
            # the weights of an undisturbed run.
            # Long enough to outlast starting the CPU hogs, which takes seconds on a busy machine (with
            # 6 epochs the job once finished before its node was killed).
            spec = small_spec("npz:blobs.npz", numWorkers=2, batchSize=10, epochs=15)
            hit = client.submit(spec)
            wait(client, hit.id, lambda j: j.progress.step > 0)
            slots = running.scheduler.runner(hit.id)._cpus.reservation.nodes()
            hogs = fill_free_cpus(cluster, slots, spare=slots[0])
            node = next(n for n in cluster.list_all_nodes() if n.node_id == slots[0])
            seen["state_at_kill"] = pb.JobState.Name(client.get(hit.id).state)
            killed_at = time.monotonic()
            cluster.remove_node(node, allow_graceful=False)
            noticed = wait(client, hit.id, lambda j: "died" in j.message or j.state != pb.RUNNING)
            seen["noticed_after_s"] = round(time.monotonic() - killed_at, 1)
            waiting = wait(client, hit.id, lambda j: "waiting for" in j.message or j.state != pb.RUNNING)
            seen["replacing"] = {
                "state": pb.JobState.Name(waiting.state),
                "message": waiting.message,
                "workers_alive": running.scheduler.workers_alive(),
            }
            for hog in hogs:
                ray.kill(hog)
            cluster.add_node(num_cpus=CPUS_PER_NODE)
            done = wait(client, hit.id, lambda j: j.state in (pb.SUCCEEDED, pb.FAILED, pb.CANCELLED), 240)
            seen["node_lost"] = {
                "state": pb.JobState.Name(done.state),
                "message": noticed.message,
                # workers replaced, or (the survivor lost too) a restart of every actor from the checkpoint
                "restarts": done.progress.worker_restarts + done.progress.server_restarts,
            }
            straight = client.submit(spec)
            wait(client, straight.id, lambda j: j.state in (pb.SUCCEEDED, pb.FAILED, pb.CANCELLED), 240)
            client.download(hit.id, folder / "hit.npz")
            client.download(straight.id, folder / "straight.npz")
            seen["same_weights"] = _same_weights(folder / "hit.npz", folder / "straight.npz")

            # Scaled 1 -> 3 -> 2 workers across the nodes mid-job: the weights of the fixed 2-worker run.
            # Each switch is asked for as soon as the one before it shows; 20 epochs (6,000 steps)
            # leave time for both even on a loaded machine.
            scale_spec = small_spec("npz:blobs.npz", numWorkers=1, batchSize=10, epochs=20)
            scaled = client.submit(scale_spec)
            wait(client, scaled.id, lambda j: j.progress.step > 0)
            client.scale(scaled.id, 3)
            wait(client, scaled.id, lambda j: j.spec.num_workers == 3 or j.state != pb.RUNNING)
            runner = running.scheduler.runner(scaled.id)
            seen["scaled_nodes"] = len(set(runner._cpus.reservation.nodes())) if runner else 0
            client.scale(scaled.id, 2)
            done = wait(client, scaled.id, lambda j: j.state in (pb.SUCCEEDED, pb.FAILED, pb.CANCELLED), 240)
            seen["scaled"] = {"state": pb.JobState.Name(done.state), "workers": done.spec.num_workers}
            scale_spec.num_workers = 2
            fixed = client.submit(scale_spec)
            wait(client, fixed.id, lambda j: j.state in (pb.SUCCEEDED, pb.FAILED, pb.CANCELLED), 240)
            client.download(scaled.id, folder / "scaled.npz")
            client.download(fixed.id, folder / "fixed.npz")
            seen["scaled_same_weights"] = _same_weights(folder / "scaled.npz", folder / "fixed.npz")
    finally:
        running.stop(grace_s=1.0)
        ray.shutdown()
        cluster.shutdown()
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
