"""A coordinator on a real multi-node Ray cluster: workers spread over nodes, a job larger than the
cluster waits and starts when a node joins, a killed node is noticed within seconds and its worker
replaced, once a CPU is free, with the same final weights. The cluster runs in
tests/multinode_scenario.py, a process of its own (this test session already holds a Ray), inside a
network namespace that has only loopback, so all of the cluster's traffic stays on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.netns import loopback_namespace, why_unavailable

pytestmark = [pytest.mark.integration, pytest.mark.ray, pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def seen() -> dict:
    if reason := why_unavailable():
        if os.environ.get("CI") == "true":
            pytest.fail(f"the multi-node tests must run in CI: {reason}")
        pytest.skip(reason)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled"}
    with loopback_namespace() as inside:
        done = subprocess.run(
            [*inside, sys.executable, str(ROOT / "tests" / "multinode_scenario.py")],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_cluster_uses_only_loopback(seen) -> None:
    """Every node of the test cluster registered a loopback address, so no traffic left the machine."""
    assert seen["node_addresses"] == ["127.0.0.1"]


def test_a_jobs_workers_land_on_two_distinct_nodes(seen) -> None:
    """Two workers on a cluster of two 2-CPU worker nodes are placed one per node (SPREAD, not PACK)."""
    assert len(seen["spread_nodes"]) == 2


def test_a_job_larger_than_the_cluster_waits_then_runs_when_a_node_joins(seen) -> None:
    """A 5-worker job on 4 CPUs stays QUEUED with the reason, and succeeds once a third node joins."""
    assert seen["waiting"] == {
        "state": "QUEUED",
        "message": "waiting for 5 CPUs for the workers; cluster has 4 free",
    }
    assert seen["still_waiting"] == "QUEUED"
    assert seen["after_node_added"]["state"] == "SUCCEEDED"


def test_a_killed_node_is_noticed_in_seconds_and_the_result_is_unchanged(seen) -> None:
    """Killing a worker's raylet mid-job is noticed within 20 s. While no CPU is free the job says
    what it waits for and counts only live workers; once CPUs return it ends with the weights of an
    undisturbed run. Timing picks the path: the lost worker replaced (or, when the survivor did not
    answer in time either, both), or a restart from the last checkpoint in CPUs reserved afresh."""
    assert seen["state_at_kill"] == "RUNNING", seen  # else the kill tested nothing
    assert seen["noticed_after_s"] < 20
    replacing = seen["replacing"]
    assert "waiting for" in replacing["message"], replacing
    assert replacing["workers_alive"] < 2, replacing  # the dead worker is not counted
    if replacing["state"] == "RUNNING":
        assert "died at step" in replacing["message"] and "to replace" in replacing["message"], replacing
    else:
        assert replacing["state"] == "QUEUED", replacing
    assert seen["node_lost"]["state"] == "SUCCEEDED"
    assert seen["node_lost"]["restarts"] >= 1
    assert seen["same_weights"] is True


def test_scaling_across_nodes_mid_job_keeps_the_weights(seen) -> None:
    """Scaled 1 -> 3 -> 2 workers over several nodes mid-job, it ends with a fixed 2-worker run's weights."""
    assert seen["scaled_nodes"] >= 2
    assert seen["scaled"] == {"state": "SUCCEEDED", "workers": 2}
    assert seen["scaled_same_weights"] is True
