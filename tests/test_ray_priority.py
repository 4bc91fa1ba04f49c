"""Training workers run at the coordinator's priority, not at Ray's default nice 15."""

from __future__ import annotations

import os

import numpy as np
import ray

from workers.worker import GradientWorker, ModelPlan


def test_worker_actors_run_at_normal_priority(ray_session) -> None:
    """At nice 15 every gRPC call the coordinator serves (nice 0) preempts a training step; with
    RAY_worker_niceness=0 from set_embedded_ray_environment the worker processes stay at 0."""
    plan = ModelPlan((2, 2), ("identity",), "mean_squared_error", 1, 1, 0)
    x, y, zeros = np.zeros((1, 2), np.float32), np.zeros(1, np.int64), np.zeros(2, np.float32)
    worker = GradientWorker.remote(plan, 0, x, y, None, None, zeros, zeros + 1)
    try:
        pid = ray.get(worker.pid.remote(), timeout=60)
        assert os.getpriority(os.PRIO_PROCESS, pid) == 0
    finally:
        ray.kill(worker)
