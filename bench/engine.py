"""Benchmark of the numpy engine's training step against PyTorch on the CPU.

Run from the repository root on a quiet machine, without the environment's slow OpenBLAS overrides:

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=. .venv/bin/python bench/engine.py

It prints, for 784-256-128-10 (ReLU, softmax cross-entropy, Adam) at batch 64, 256 and 1024 with 1 and
2 BLAS threads: samples/s of one step (forward, backward, Adam update) for gradfleet's engine and for
PyTorch (when installed: the optional `bench` extra) timed in alternating rounds, the median of the
per-round ratios, and the fraction of the measured
one-thread float32 matmul rate the engine's step reaches. Then the step time in epoch 1 and epoch 10
of a run whose sparse inputs leave Adam moments decaying toward subnormals, and a tracemalloc check
that steady-state steps allocate no parameter-sized array. `--quick` runs a short version.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from workers.nn import Network, make_optimizer

LAYERS = (784, 256, 128, 10)
BATCHES = (64, 256, 1024)
THREADS = (1, 2)
LEARNING_RATE = 1e-3


@dataclass(frozen=True)
class Rate:
    """Samples per second over several timed rounds."""

    median: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.median / 1e3:7.1f}k ({self.low / 1e3:.0f}-{self.high / 1e3:.0f}k)"


def step_flops(batch: int) -> int:
    """Real FLOPs of one step: forward and weight-gradient matmuls of every layer, input-gradient
    matmuls of every layer but the first (2 FLOPs per multiply-add); about 4.28 x params per sample."""
    products = [fan_in * fan_out for fan_in, fan_out in itertools.pairwise(LAYERS)]
    return 2 * batch * (2 * sum(products) + sum(products[1:]))


def blas_report() -> str:
    """The BLAS libraries numpy uses, with kernel and threads; warns about a forced Haswell kernel."""
    lines = []
    for pool in threadpool_info():
        arch = pool.get("architecture", "?")
        lines.append(
            f"{pool['internal_api']} {pool.get('version', '')} kernel={arch} threads={pool['num_threads']}"
        )
        if str(arch).lower() == "haswell":
            lines.append(
                "WARNING: OpenBLAS runs its Haswell kernel (OPENBLAS_CORETYPE?): about 30-40% slower here; "
                "run with `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE`"
            )
    return "\n".join(lines)


def measure_pair(
    ours: Callable[[], None], theirs: Callable[[], None] | None, batch: int, rounds: int, steps: int
) -> tuple[Rate, Rate | None, float | None]:
    """Warm both up, then time `rounds` rounds of `steps` steps, ours and theirs taking turns, so
    that a neighbour's burst on a shared machine hits both alike; samples/s per round, and the
    median of the per-round ratios (ours / theirs)."""
    steppers = [ours] if theirs is None else [ours, theirs]
    for step in steppers:
        for _ in range(max(3, steps // 4)):
            step()
    rates: list[list[float]] = [[] for _ in steppers]
    for _ in range(rounds):
        for rate, step in zip(rates, steppers, strict=True):
            start = time.perf_counter()
            for _ in range(steps):
                step()
            rate.append(batch * steps / (time.perf_counter() - start))
    summaries = [Rate(statistics.median(r), min(r), max(r)) for r in rates]
    if theirs is None:
        return summaries[0], None, None
    ratio = statistics.median(a / b for a, b in zip(rates[0], rates[1], strict=True))
    return summaries[0], summaries[1], ratio


def matmul_rate(threads: int, size: int = 1024, repeats: int = 7) -> float:
    """Best float32 FLOP/s of a size x size matmul with `threads` BLAS threads."""
    rng = np.random.default_rng(0)
    a, b = rng.random((size, size), dtype=np.float32), rng.random((size, size), dtype=np.float32)
    out = np.empty_like(a)
    best = float("inf")
    with threadpool_limits(threads):
        for _ in range(repeats):
            start = time.perf_counter()
            np.matmul(a, b, out=out)
            best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


class EngineStep:
    """One engine step on fixed data: loss_and_grad, average, Adam update (all buffers reused)."""

    def __init__(self, batch: int, flush_every: int = 16) -> None:
        rng = np.random.default_rng(0)
        self.net = Network(list(LAYERS), ["relu", "relu", "identity"], "softmax_cross_entropy")
        self.params = self.net.init_params(rng)
        self.grad = np.empty_like(self.params)
        self.optimizer = make_optimizer("adam", self.net.num_params, np.float32, flush_every=flush_every)
        self.x = rng.random((batch, LAYERS[0]), dtype=np.float32)
        self.y = rng.integers(0, LAYERS[-1], batch)
        self.scale = np.float32(1.0 / batch)

    def __call__(self, x: np.ndarray | None = None, y: np.ndarray | None = None) -> None:
        x, y = (self.x, self.y) if x is None else (x, y)
        self.net.loss_and_grad(self.params, x, y, self.grad)
        self.grad *= self.scale
        self.optimizer.step(self.params, self.grad, LEARNING_RATE)


def torch_step(batch: int):
    """The same step in PyTorch (mean cross-entropy, Adam with its defaults), or None without torch."""
    try:
        import torch
    except ImportError:
        return None
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(784, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 10),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    loss_fn = torch.nn.CrossEntropyLoss()
    x, y = torch.rand(batch, 784), torch.randint(0, 10, (batch,))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()

    return step


def torch_threads(threads: int) -> None:
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(threads)


def throughput_table(rounds: int, steps: int, reference_flops: float) -> None:
    header = f"{'gradfleet samples/s':>22}  {'pytorch samples/s':>22}  ratio  of 1-thread matmul"
    print(f"\n{'threads':>7} {'batch':>5}  {header}")
    for threads in THREADS:
        for batch in BATCHES:
            per_round = max(4, steps * 256 // batch)
            torch_threads(threads)
            with threadpool_limits(threads):
                ours, theirs, paired = measure_pair(
                    EngineStep(batch), torch_step(batch), batch, rounds, per_round
                )
            fraction = ours.median / batch * step_flops(batch) / reference_flops
            ratio = f"{paired:5.2f}" if theirs else "   - "
            other = str(theirs) if theirs else "not installed"
            print(f"{threads:>7} {batch:>5}  {ours!s:>22}  {other:>22}  {ratio}  {fraction:6.1%}")


def sparse_data(rng: np.random.Generator, samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs whose last 300 features are non-zero in only 0.2% of samples, like the border pixels of
    Fashion-MNIST: their weights get rare gradients, so Adam's moments decay toward subnormals."""
    x = rng.random((samples, LAYERS[0]), dtype=np.float32)
    x[:, -300:] *= rng.random((samples, 300)) < 0.002
    return x, rng.integers(0, LAYERS[-1], samples)


def steady_state(steps_per_epoch: int, flush_every: int, epochs: int = 10, batch: int = 256) -> None:
    """Median step time (one thread) in epoch 1 and epoch `epochs` of a run on sparse inputs."""
    rng = np.random.default_rng(1)
    x, y = sparse_data(rng, steps_per_epoch * batch)
    step = EngineStep(batch, flush_every)
    for _ in range(3):  # allocate the workspaces before timing
        step.net.loss_and_grad(step.params, x[:batch], y[:batch], step.grad)
    epoch_seconds = []
    with threadpool_limits(1):
        for _ in range(epochs):
            times = []
            for index in range(steps_per_epoch):
                rows = slice(index * batch, (index + 1) * batch)
                start = time.perf_counter()
                step(x[rows], y[rows])
                times.append(time.perf_counter() - start)
            epoch_seconds.append(statistics.median(times))
    moments = step.optimizer.first_moment
    subnormal = np.count_nonzero((moments != 0) & (np.abs(moments) < np.finfo(np.float32).tiny))
    change = epoch_seconds[-1] / epoch_seconds[0] - 1
    print(
        f"\nsteady state (batch {batch}, {steps_per_epoch} steps/epoch, 1 thread, Adam flush every "
        f"{flush_every} steps): median epoch 1 "
        f"{epoch_seconds[0] * 1e3:.2f} ms/step, epoch {epochs} {epoch_seconds[-1] * 1e3:.2f} ms/step "
        f"({change:+.1%}; target within 10%); subnormal first moments now: {subnormal}"
    )


def allocation_check(batch: int = 256, steps: int = 20) -> None:
    """Peak traced allocation over steady-state steps, against the parameter vector's size: the
    engine's step, and the distributed path (two workers' shares, the server's reduce and apply)."""
    engine = EngineStep(batch)
    service = ServiceStep(batch)
    for name, step in (("engine step", engine), ("2 workers + reduce + apply", service)):
        with threadpool_limits(1):
            for _ in range(20):  # includes a subnormal flush
                step()
            tracemalloc.start()
            for _ in range(steps):
                step()
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        param_bytes = engine.params.nbytes
        verdict = "OK" if peak < param_bytes / 4 else "FAIL: a parameter-sized array is allocated per step"
        print(f"\nallocation, {name}: peak {peak / 1e3:.1f} kB over {steps} steps; ", end="")
        print(f"parameters are {param_bytes / 1e3:.0f} kB: {verdict}")


class ServiceStep:
    """What the service does per step, without Ray: the parameter server's real step loop
    (ParameterServerCore: workers' shares, tree reduction, checks, Adam) over in-process workers."""

    def __init__(self, batch: int, workers: int = 2) -> None:
        from service.param_server import ParameterServer, ParameterServerCore
        from workers.nn import make_schedule
        from workers.worker import GradientWorkerCore, ModelPlan

        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, (batch * 8, LAYERS[0]), dtype=np.uint8)
        y = rng.integers(0, LAYERS[-1], batch * 8)
        plan = ModelPlan(LAYERS, ("relu", "relu", "identity"), "softmax_cross_entropy", batch, workers, 1)
        ones = np.ones(LAYERS[0], np.float32)
        cores = [GradientWorkerCore(plan, r, x, y, None, None, 0 * ones, ones) for r in range(workers)]
        net = plan.network()
        opt = make_optimizer("adam", net.num_params, np.float32)
        schedule = make_schedule("constant", LEARNING_RATE, steps_per_epoch=8, total_steps=10**9)
        self.server = ParameterServer(net.init_params(rng), opt, schedule)
        group = _InProcessGroup(plan, cores)
        self.core = ParameterServerCore(group, self.server, len(y), 10**6, step_timeout_s=60.0)

    def __call__(self) -> None:
        self.core.train(self.server.step + 1, max_seconds=60.0)


class _InProcessGroup:
    """Stands in for workers.group.WorkerGroup: each command goes to every core directly."""

    def __init__(self, plan, cores: list) -> None:
        self.plan, self.cores, self.size = plan, cores, len(cores)

    def run(self, command, timeout_s: float, idle_s: float = 0.0) -> list:
        return [core.handle(command) for core in self.cores]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run to check the benchmark works")
    parser.add_argument(
        "--no-flush", action="store_true", help="never flush Adam's subnormal moments (shows the trap)"
    )
    args = parser.parse_args()
    rounds, steps, epoch_steps = (3, 8, 40) if args.quick else (7, 40, 235)
    print(f"numpy {np.__version__}; {blas_report()}")
    one, two = matmul_rate(1), matmul_rate(2)
    print(f"float32 matmul 1024^3: {one / 1e9:.0f} GFLOP/s on 1 thread, {two / 1e9:.0f} on 2")
    print(f"step FLOPs per sample: {step_flops(1):,} (= {step_flops(1) / 235_146:.2f} x parameters)")
    throughput_table(rounds, steps, one)
    steady_state(epoch_steps, flush_every=10**9 if args.no_flush else 16)
    allocation_check()


if __name__ == "__main__":
    main()
