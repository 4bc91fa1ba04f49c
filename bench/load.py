"""Load on a coordinator: read traffic while a job trains, and a burst of submissions.

    python bench/load.py [--clients 50] [--seconds 30] [--windows 3] [--interval 1] [--burst 200]
                         [--max-queued-jobs 50] [--clients-nice 0] [--workers 2]

Starts `gradfleet serve` in a subprocess (the clients here must not share its interpreter), then:
1. trains one long Fashion-MNIST job (or a synthetic one with --synthetic) and measures its
   samples/s (between the first and last progress report in a window, by the coordinator's
   timestamps on them) in alternating windows: alone, then while N clients each hold a WatchJob stream and
   call GetJob and ListJobs once every --interval seconds (1 s: a dashboard's refresh; 0: back to
   back, a stress test that takes every spare cycle), then alone again, and so on: --seconds of load
   in --windows windows, each compared with the mean of the alone windows around it, so a drift of
   a shared machine's speed cancels. Reports errors, p50/p99 latency, whether every stream of the
   last window ended cleanly when the job did (earlier windows' clients hang up), the median and
   range of the per-window slowdowns, and the CPU the coordinator and the clients used (here they
   share the job's cores);
2. submits --burst jobs at once to a queue capped at --max-queued-jobs: every one is accepted or
   refused with RESOURCE_EXHAUSTED, none is lost, and the queue drains in submission order.
The functions are imported by tests/test_load.py with small counts.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from gradfleet.v1 import coordinator_pb2 as pb
from service.client import CoordinatorClient
from service.jobs import TERMINAL_STATES
from service.wording import plural

ROOT = Path(__file__).resolve().parent.parent
WARM_UP_S = 5.0  # training before the first window: the first steps run slower (caches, page faults)
CONNECT_TIMEOUT_S = 30.0  # for every client to open its stream and make its first calls


@dataclass
class ReadLoad:
    """What N clients saw: call latencies in seconds by method, errors, and stream endings."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: {"GetJob": [], "ListJobs": []})
    errors: list[str] = field(default_factory=list)
    streams_opened: int = 0
    streams_clean: int = 0  # ended by the server after the job's terminal STATE event
    streams_hung_up: int = 0  # closed by their client while the job trained on
    watch_events: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, method: str, seconds: float) -> None:
        with self._lock:
            self.latencies[method].append(seconds)

    def fail(self, what: str) -> None:
        with self._lock:
            self.errors.append(what)

    def percentile(self, q: float, method: str | None = None) -> float:
        values = sorted(self.latencies[method] if method else [x for v in self.latencies.values() for x in v])
        return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")

    def calls(self) -> int:
        return sum(len(v) for v in self.latencies.values())


def read_load(
    address: str,
    job_id: str,
    clients: int,
    during: Callable[[], float],
    end_job: Callable[[], None] | None,
    interval_s: float = 0.0,
    report: ReadLoad | None = None,
) -> tuple[ReadLoad, float]:
    """N clients loop GetJob/ListJobs while each holds a WatchJob stream on `job_id`, for as long
    as `during()` runs (its result is returned too), which starts once every client has opened its
    stream and made its first round of calls (or after CONNECT_TIMEOUT_S); then `end_job()` is
    called and every stream must end with the job's terminal event (`end_job=None`: the clients
    hang up their streams instead, and the job trains on). Each client pauses `interval_s` between
    rounds (0: back to back, a stress test). Adds to `report` when one is given."""
    report = report or ReadLoad()
    stop, hang_up = threading.Event(), threading.Event()
    calls: list[grpc.Future] = []
    watch_args = (address, job_id, report, calls, hang_up)
    watchers = [threading.Thread(target=_watch, args=watch_args) for _ in range(clients)]
    pollers = [
        threading.Thread(target=_poll, args=(address, job_id, report, stop, interval_s))
        for _ in range(clients)
    ]
    streams_before, calls_before = report.streams_opened, report.calls()
    for thread in watchers + pollers:
        thread.start()
    # `during` measures the steady load, not the clients' start: 2N connections and threads.
    _wait_until(lambda: report.streams_opened - streams_before >= clients, CONNECT_TIMEOUT_S)
    _wait_until(lambda: report.calls() - calls_before >= 2 * clients, CONNECT_TIMEOUT_S)
    result = during()
    stop.set()
    for thread in pollers:
        thread.join()
    if end_job is None:
        hang_up.set()
        with report._lock:
            for call in calls:
                call.cancel()
    else:
        end_job()
    for thread in watchers:
        thread.join(timeout=60)
        if thread.is_alive():
            report.fail("a watch stream did not end within 60 s of the job's end")
    return report, result


def _wait_until(condition: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)


def _poll(address: str, job_id: str, report: ReadLoad, stop: threading.Event, interval_s: float) -> None:
    with CoordinatorClient(address, timeout=30) as client:
        calls = (("GetJob", lambda: client.get(job_id)), ("ListJobs", lambda: client.list()))
        while not stop.is_set():
            for method, call in calls:
                start = time.perf_counter()
                try:
                    call()
                except grpc.RpcError as exc:
                    report.fail(f"{method}: {exc.code().name}: {exc.details()}")
                    continue
                report.record(method, time.perf_counter() - start)
            stop.wait(interval_s)


def _watch(
    address: str, job_id: str, report: ReadLoad, calls: list[grpc.Future], hang_up: threading.Event
) -> None:
    with CoordinatorClient(address) as client:
        last, count = None, 0
        stream = client.watch(job_id)
        with report._lock:
            report.streams_opened += 1
            if hang_up.is_set():  # started after the hang-up went out
                stream.cancel()
            calls.append(stream)
        try:
            for event in stream:
                last, count = event, count + 1
        except grpc.RpcError as exc:
            if not (hang_up.is_set() and exc.code() == grpc.StatusCode.CANCELLED):
                report.fail(f"WatchJob: {exc.code().name}: {exc.details()}")
                return
        with report._lock:
            report.watch_events += count
            if last is not None and last.job.state in TERMINAL_STATES:
                report.streams_clean += 1
            elif hang_up.is_set():
                report.streams_hung_up += 1


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far, from /proc (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class CpuUse:
    """Cores' worth of CPU (CPU seconds per second) two processes used over a window."""

    coordinator: float
    clients: float


def cpu_use_during(server_pid: int, window: Callable[[], float]) -> tuple[float, CpuUse]:
    """Run `window()` (returns its result) and measure the coordinator's and this process's CPU."""
    server, own, start = cpu_seconds(server_pid), time.process_time(), time.monotonic()
    result = window()
    elapsed = time.monotonic() - start
    use = CpuUse((cpu_seconds(server_pid) - server) / elapsed, (time.process_time() - own) / elapsed)
    return result, use


class ProgressLog:
    """(time, samples_trained) of every change of the job, as its own WatchJob stream reports them.

    The times are the coordinator's, taken as it records each report of the parameter server, so a
    rate over two of them counts whole reports. Two GetJob calls some seconds apart instead catch the
    counter at any point between two reports, half a second apart: a 10 s window then measured up to
    5% off either way, more than the effect being measured.
    """

    def __init__(self, address: str, job_id: str) -> None:
        self._client = CoordinatorClient(address)
        self._stream = self._client.watch(job_id)
        self._points: list[tuple[float, int]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        try:
            for event in self._stream:
                point = (event.time.ToNanoseconds() / 1e9, event.job.progress.samples_trained)
                with self._lock:
                    self._points.append(point)
        except grpc.RpcError:
            pass  # closed by close(), or the job ended

    def rate_during(self, seconds: float) -> float:
        """The job's samples/s over the next `seconds`: between the first and the last report in them."""
        start = time.time()
        time.sleep(seconds)
        end = time.time()
        with self._lock:
            inside = [(t, n) for t, n in self._points if start <= t <= end]
        if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
            raise RuntimeError(f"fewer than 2 progress reports in {seconds:g} s; use longer windows")
        (t0, n0), (t1, n1) = inside[0], inside[-1]
        return (n1 - n0) / (t1 - t0)

    def close(self) -> None:
        self._stream.cancel()
        self._thread.join(timeout=10)
        self._client.close()


def wait_training(client: CoordinatorClient, job_id: str, timeout_s: float = 120) -> None:
    """Return once the job has trained a few steps (workers up, data loaded)."""
    deadline = time.monotonic() + timeout_s
    while client.get(job_id).progress.step < 5:
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} did not start training: {client.get(job_id)}")
        time.sleep(0.1)


@dataclass
class Burst:
    accepted: list[str]  # job ids in the order the server created them
    refused: list[str]  # status details
    other_errors: list[str]


def submit_burst(address: str, spec: pb.JobSpec, count: int, connections: int = 50) -> Burst:
    """Submit `count` copies of `spec` at once from `connections` clients."""
    clients = [CoordinatorClient(address, timeout=60) for _ in range(min(connections, count))]
    results: list[tuple[str, str]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(count)

    def one(i: int) -> None:
        barrier.wait()  # all at once
        try:
            outcome = ("ok", clients[i % len(clients)].submit(spec).id)
        except grpc.RpcError as exc:
            kind = "refused" if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED else "error"
            outcome = (kind, f"{exc.code().name}: {exc.details()}")
        with lock:
            results.append(outcome)

    try:
        with ThreadPoolExecutor(max_workers=max(1, count)) as pool:
            list(pool.map(one, range(count)))
        ids = {value for kind, value in results if kind == "ok"}
        created = [j.id for j in reversed(clients[0].list(page_size=1000)) if j.id in ids]
    finally:
        for client in clients:
            client.close()
    return Burst(
        accepted=created,
        refused=[v for k, v in results if k == "refused"],
        other_errors=[v for k, v in results if k == "error"],
    )


def drained_in_order(client: CoordinatorClient, job_ids: list[str], timeout_s: float) -> list[pb.Job]:
    """Wait for every job to end; returns them. Their start times must follow `job_ids` order."""
    deadline = time.monotonic() + timeout_s
    while True:
        jobs = [client.get(job_id) for job_id in job_ids]
        if all(j.state in TERMINAL_STATES for j in jobs):
            return jobs
        if time.monotonic() > deadline:
            raise TimeoutError(f"{sum(j.state not in TERMINAL_STATES for j in jobs)} jobs still not done")
        time.sleep(0.5)


def started_in_order(jobs: list[pb.Job]) -> bool:
    starts = [j.started_at.ToNanoseconds() for j in jobs]
    return all(starts) and starts == sorted(starts)


# ---------------------------------------------------------------------------------------------
# The benchmark


def _start_server(state: Path, data_root: Path, max_queued: int) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "service.cli", "serve", "--port", "0", "--metrics-port", "-1"]
    command += [
        "--state-dir",
        str(state),
        "--data-root",
        str(data_root),
        "--max-queued-jobs",
        str(max_queued),
    ]
    log = state.parent / "coordinator.log"
    with log.open("w") as err:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True)
    for line in proc.stdout:
        if match := re.search(r"listening on ([^\s,]+)", line):
            return proc, match.group(1)
    raise RuntimeError("the coordinator exited before listening:\n" + log.read_text()[-3000:])


def _write_blobs(path: Path, n: int, features: int, classes: int) -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, classes, n)
    x = rng.normal(0, 3, (classes, features))[y] + rng.normal(0, 1, (n, features))
    np.savez(path, x_train=x.astype(np.float32), y_train=y)


def _spec(uri: str, **changes) -> pb.JobSpec:
    from service.spec import spec_from_dict

    spec = {
        "name": "load",
        "dataset": {"uri": uri},
        "layers": [{"units": 256}, {"units": 128}, {"units": 10}],
        "batchSize": 256,
        "epochs": 1000,
        "numWorkers": 2,
    }
    return spec_from_dict(spec | changes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument(
        "--interval", type=float, default=1.0, help="pause between a client's rounds, s (0: back to back)"
    )
    parser.add_argument(
        "--windows", type=int, default=3, help="load windows, each between two alone windows of its length"
    )
    parser.add_argument("--burst", type=int, default=200, help="jobs submitted at once (0: no burst)")
    parser.add_argument("--max-queued-jobs", type=int, default=50)
    parser.add_argument("--synthetic", action="store_true", help="blobs instead of Fashion-MNIST")
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="the job's worker actors (one CPU each); cpu_count - 1 leaves the coordinator a core of its "
        "own, as a cluster deployment does (README, Running on a cluster)",
    )
    parser.add_argument(
        "--clients-nice",
        type=int,
        default=0,
        help="run the clients (this process) at this nice value once the coordinator has started, "
        "standing in for clients on other machines; the coordinator and the job stay at nice 0",
    )
    args = parser.parse_args(argv)
    if args.windows < 1:
        parser.error(f"--windows: got {args.windows}; must be at least 1")
    if not 0 <= args.clients_nice <= 19:
        parser.error(f"--clients-nice: got {args.clients_nice}; must be 0 to 19")
    if not 1 <= args.workers <= (os.cpu_count() or 1):
        parser.error(f"--workers: got {args.workers}; must be 1 to {os.cpu_count()} (this machine's CPUs)")
    if args.burst < 0:
        parser.error(f"--burst: got {args.burst}; must be 0 (no burst) or more")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        uri = "fashion-mnist"
        if args.synthetic:
            _write_blobs(data / "blobs.npz", n=20000, features=784, classes=10)
            uri = "npz:blobs.npz"
        proc, address = _start_server(Path(tmp) / "state", data, args.max_queued_jobs)
        os.nice(args.clients_nice)  # after the start: the coordinator and its Ray keep nice 0
        try:
            return _run(address, uri, args, proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=60)


def _run(address: str, uri: str, args: argparse.Namespace, server_pid: int) -> int:
    window_s = args.seconds / args.windows
    report, alone, loaded = ReadLoad(), [], []
    with CoordinatorClient(address) as client:
        client.wait_ready(timeout=120)
        job = client.submit(_spec(uri, numWorkers=args.workers))
        wait_training(client, job.id)
        time.sleep(WARM_UP_S)

        progress = ProgressLog(address, job.id)

        def measure() -> tuple[float, CpuUse]:
            return cpu_use_during(server_pid, lambda: progress.rate_during(window_s))

        try:
            alone.append(measure())
            for window in range(args.windows):
                last = window == args.windows - 1
                # Earlier windows' clients hang up; the last window's streams must end with the job.
                end_job = (lambda: client.cancel(job.id)) if last else None
                _, under_load = read_load(
                    address, job.id, args.clients, measure, end_job, args.interval, report
                )
                loaded.append(under_load)
                if not last:
                    alone.append(measure())
        finally:
            progress.close()
    _print_read_load(report, args, alone, loaded)
    clean = report.streams_clean == args.clients and report.streams_opened == args.clients * args.windows
    if args.burst == 0:
        return 0 if clean and not report.errors else 1
    small = _spec(uri, epochs=1, numWorkers=1, dataset={"uri": uri, "maxTrainSamples": 512})
    burst = submit_burst(address, small, args.burst)
    print(
        f"burst: {args.burst} submitted, {len(burst.accepted)} accepted, {len(burst.refused)} "
        f"refused (RESOURCE_EXHAUSTED), {len(burst.other_errors)} other errors"
    )
    with CoordinatorClient(address) as client:
        start = time.monotonic()
        jobs = drained_in_order(client, burst.accepted, timeout_s=3600)
        in_order = started_in_order(jobs)
        print(f"  drained in {time.monotonic() - start:.0f} s; started in submission order: {in_order}")
    counted = len(burst.accepted) + len(burst.refused) == args.burst
    return 0 if clean and counted and in_order and not (report.errors or burst.other_errors) else 1


def _print_read_load(
    report: ReadLoad,
    args: argparse.Namespace,
    alone: list[tuple[float, CpuUse]],
    loaded: list[tuple[float, CpuUse]],
) -> None:
    calls, errors = report.calls(), len(report.errors)
    pace = f"{args.interval:g} s apart" if args.interval else "back to back"
    print(
        f"read load: {args.clients} clients x {args.seconds:g} s in {args.windows} windows ({pace}), "
        f"job with {plural(args.workers, 'worker')}, {calls} calls ({calls / args.seconds:,.0f}/s), "
        f"{errors} errors"
    )
    for method, values in report.latencies.items():
        p50, p99 = report.percentile(0.5, method) * 1e3, report.percentile(0.99, method) * 1e3
        print(f"  {method}: {len(values)} calls, p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    print(
        f"  WatchJob: {report.streams_opened} streams, {report.streams_hung_up} closed by their "
        f"clients between windows, {report.streams_clean} ended cleanly with the job, "
        f"{report.watch_events} events"
    )
    slower = []
    for i, (rate, use) in enumerate(loaded):
        neighbours = [r for r, _ in alone[i : i + 2]]  # the alone windows before and after
        reference = sum(neighbours) / len(neighbours)
        slower.append((1 - rate / reference) * 100)
        print(
            f"  window {i + 1}: {reference:,.0f} samples/s alone (mean of the windows around it), "
            f"{rate:,.0f} under load ({slower[-1]:.1f}% slower); CPU in cores: coordinator "
            f"{use.coordinator:.2f}, clients {use.clients:.2f}"
        )
    idle = sum(use.coordinator for _, use in alone) / len(alone)
    print(
        f"  job samples/s under load: median {np.median(slower):.1f}% slower "
        f"(windows {min(slower):.1f}% to {max(slower):.1f}%); the coordinator used {idle:.2f} cores "
        f"alone; the clients (this process, nice {os.nice(0)}) run on the same {os.cpu_count()} "
        "cores as the job"
    )
    for error in report.errors[:5]:
        print(f"  error: {error}")


if __name__ == "__main__":
    sys.exit(main())
