"""Time to a target test accuracy on Fashion-MNIST: gradfleet's service, its engine, scikit-learn, PyTorch.

Run from the repository root on a quiet machine:

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=. .venv/bin/python bench/tta.py

Every contender trains the example's model (784-256-128-10, ReLU, examples/fashion_mnist.yaml) with
Adam at a constant 1e-3, batch 256, inputs scaled to [0, 1], evaluating on the 10,000 test images
after every epoch, until the test accuracy reaches --target (0.88) or --max-epochs pass:

- gradfleet: a coordinator in this process with 2 Ray workers; Ray is started before the clock, the
  clock runs from SubmitJob to the evaluation event that reaches the target (so it includes loading
  the dataset, starting the workers and every evaluation);
- engine: workers/nn in this process, no Ray;
- scikit-learn's MLPClassifier (partial_fit, one epoch per call) and PyTorch, when installed (the
  optional `bench` extra).

`--quick` trains on 10,000 images for one epoch, to check that everything runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.datasets.idx import load_idx_dir  # noqa: E402
from workers.nn import Network, make_optimizer  # noqa: E402

DEFAULT_DATA = Path("/usr/share/datasets/fashion-mnist")
BATCH = 256
LEARNING_RATE = 1e-3


@dataclass
class Outcome:
    name: str
    seconds_to_target: float | None  # None: never reached
    epochs: int
    best_accuracy: float
    seconds: float  # total wall time of the run

    def line(self, target: float) -> str:
        reached = f"{self.seconds_to_target:7.1f} s" if self.seconds_to_target is not None else "     never"
        per_epoch = self.seconds / max(self.epochs, 1)
        return (
            f"{self.name:<12} {reached}  after {self.epochs:2d} epochs  "
            f"best accuracy {self.best_accuracy:.4f}  "
            f"({per_epoch:.2f} s/epoch incl. evaluation; target {target})"
        )


@dataclass(frozen=True)
class Data:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load(folder: Path, train_samples: int | None) -> Data:
    raw = load_idx_dir(folder, require_test=True, source="fashion-mnist")
    scale = np.float32(1 / 255)
    x_train = raw.x_train[:train_samples].astype(np.float32) * scale
    return Data(x_train, raw.y_train[:train_samples], raw.x_test.astype(np.float32) * scale, raw.y_test)


def run_epochs(name: str, epochs: Iterator[float], target: float, max_epochs: int) -> Outcome:
    """Drive `epochs` (each next() trains one epoch and returns test accuracy) until the target."""
    start = time.perf_counter()
    best, reached, done = 0.0, None, 0
    for done, accuracy in enumerate(epochs, start=1):
        best = max(best, accuracy)
        if accuracy >= target:
            reached = time.perf_counter() - start
            break
        if done >= max_epochs:
            break
    return Outcome(name, reached, done, best, time.perf_counter() - start)


def engine_epochs(data: Data) -> Iterator[float]:
    net = Network([784, 256, 128, 10], ["relu", "relu", "identity"], "softmax_cross_entropy")
    rng = np.random.default_rng(1)
    params = net.init_params(rng)
    grad = np.empty_like(params)
    optimizer = make_optimizer("adam", net.num_params, np.float32)
    while True:
        order = rng.permutation(len(data.y_train))
        for start in range(0, len(order), BATCH):
            rows = order[start : start + BATCH]
            net.loss_and_grad(params, data.x_train[rows], data.y_train[rows], grad)
            grad *= np.float32(1 / len(rows))
            optimizer.step(params, grad, LEARNING_RATE)
        yield net.evaluate(params, data.x_test, data.y_test)[1] / len(data.y_test)


def sklearn_epochs(data: Data) -> Iterator[float] | None:
    try:
        from sklearn.neural_network import MLPClassifier
    except ImportError:
        return None
    model = MLPClassifier(
        hidden_layer_sizes=(256, 128),
        solver="adam",
        batch_size=BATCH,
        learning_rate_init=LEARNING_RATE,
        random_state=1,
    )
    classes = np.arange(10)

    def epochs() -> Iterator[float]:
        while True:
            model.partial_fit(data.x_train, data.y_train, classes=classes)
            yield float(model.score(data.x_test, data.y_test))

    return epochs()


def torch_epochs(data: Data, threads: int) -> Iterator[float] | None:
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    torch.manual_seed(1)
    nn = torch.nn
    model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    loss_fn = nn.CrossEntropyLoss()
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train.astype(np.int64))
    x_test, y_test = torch.from_numpy(data.x_test), torch.from_numpy(data.y_test.astype(np.int64))

    def epochs() -> Iterator[float]:
        while True:
            order = torch.randperm(len(y))
            for start in range(0, len(order), BATCH):
                rows = order[start : start + BATCH]
                optimizer.zero_grad(set_to_none=True)
                loss_fn(model(x[rows]), y[rows]).backward()
                optimizer.step()
            with torch.no_grad():
                yield float((model(x_test).argmax(1) == y_test).float().mean())

    return epochs()


def service_run(folder: Path, target: float, max_epochs: int, train_samples: int | None) -> Outcome:
    """The example job through a real coordinator with 2 Ray workers, timed from SubmitJob."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # no token file lookups for a local Ray
    from gradfleet.v1 import coordinator_pb2 as pb
    from service.client import CoordinatorClient
    from service.config import ServerConfig
    from service.server import start_server
    from service.spec import load_spec_file

    overrides = [f"epochs={max_epochs}", "optimizer.schedule.kind=CONSTANT", "num_workers=2"]
    overrides.append("optimizer.schedule.min_learning_rate=0")  # COSINE's floor: CONSTANT has none
    if train_samples:
        overrides.append(f"dataset.max_train_samples={train_samples}")
    spec = load_spec_file(ROOT / "examples" / "fashion_mnist.yaml", overrides=overrides)
    with tempfile.TemporaryDirectory() as state:
        config = ServerConfig(
            host="127.0.0.1",
            port=0,
            metrics_port=-1,
            state_dir=Path(state),
            data_root=Path(state),
            dataset_search=(folder,),
        )
        running = start_server(config)  # starts Ray: not timed
        try:
            with CoordinatorClient(running.address) as client:
                client.wait_ready()
                return _watch_until(client, spec, target, pb)
        finally:
            running.stop(grace_s=2.0)


def _watch_until(client, spec, target: float, pb) -> Outcome:
    start = time.perf_counter()
    job = client.submit(spec)
    best, epochs, reached = 0.0, 0, None
    for event in client.watch(job.id):
        progress = event.job.progress
        if event.kind == pb.JobEvent.EVAL:
            best, epochs = max(best, progress.eval_accuracy), progress.epoch
            if progress.eval_accuracy >= target:
                reached = time.perf_counter() - start
                client.cancel(job.id)
                break
        if event.job.state in (pb.SUCCEEDED, pb.FAILED, pb.CANCELLED):
            if event.job.state == pb.FAILED:
                print(f"gradfleet job failed: {event.job.message}")
            break
    return Outcome("gradfleet", reached, epochs, best, time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=0.88)
    parser.add_argument("--max-epochs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2, help="BLAS/torch threads for the in-process runs")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--only", nargs="*", default=["gradfleet", "engine", "sklearn", "torch"])
    parser.add_argument("--quick", action="store_true", help="10,000 training images, one epoch")
    args = parser.parse_args()
    train_samples = 10_000 if args.quick else None
    max_epochs = 1 if args.quick else args.max_epochs
    data = load(args.data, train_samples)
    outcomes = []
    contenders: dict[str, Callable[[], Iterator[float] | None]] = {
        "engine": lambda: engine_epochs(data),
        "sklearn": lambda: sklearn_epochs(data),
        "torch": lambda: torch_epochs(data, args.threads),
    }
    if "gradfleet" in args.only:
        outcomes.append(service_run(args.data, args.target, max_epochs, train_samples))
        print(outcomes[-1].line(args.target), flush=True)
    for name, make in contenders.items():
        if name not in args.only:
            continue
        with threadpool_limits(args.threads):
            epochs = make()
            if epochs is None:
                print(f"{name:<12} not installed (pip install -e '.[bench]')")
                continue
            outcomes.append(run_epochs(name, epochs, args.target, max_epochs))
        print(outcomes[-1].line(args.target), flush=True)


if __name__ == "__main__":
    main()
