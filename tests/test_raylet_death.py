"""The embedded Ray's raylet or GCS dying under a running job: `gradfleet serve` says so and exits 1 at
once, releasing its state folder, and a restart on that folder finishes the job from its checkpoint. A
cluster's GCS (--ray-address) that stops answering is logged, and logged again when it is back."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from gradfleet.v1 import coordinator_pb2 as pb
from service.ray_watchdog import GcsProbe, RayWatchdog
from service.server import EXIT_RAY_LOST
from service.startup import LOCK_FILE
from tests.helpers import ServeProcess, descendants, small_spec, wait_for, write_blobs

N_TRAIN = 20000  # 400 steps at batch 50: still training when the raylet is killed


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen(["sleep", "60"])


def test_the_watchdog_reports_a_dead_process_once() -> None:
    """The watchdog calls back with the name, pid and exit status of the process killed under it, once,
    whichever of its processes it is."""
    raylet, gcs = _sleeper(), _sleeper()
    deaths: list[tuple[str, int, int]] = []
    watchdog = RayWatchdog(
        {"raylet": raylet, "GCS": gcs}, lambda *death: deaths.append(death), interval_s=0.05
    ).start()
    gcs.kill()
    deadline = time.monotonic() + 5
    while not deaths and time.monotonic() < deadline:
        time.sleep(0.05)
    raylet.kill()
    time.sleep(0.2)
    watchdog.stop()
    assert deaths == [("GCS", gcs.pid, -signal.SIGKILL)]


def test_a_stopped_watchdog_stays_quiet() -> None:
    """After stop() (a planned ray.shutdown) the process may end without a callback."""
    process = _sleeper()
    deaths: list[int] = []
    watchdog = RayWatchdog(
        {"raylet": process}, lambda name, pid, code: deaths.append(pid), interval_s=0.05
    ).start()
    watchdog.stop()
    process.kill()
    process.wait()
    time.sleep(0.2)
    assert deaths == []


def _children(pid: int) -> dict[int, str]:
    """The direct children of `pid` (the embedded Ray's own processes) by name, from /proc."""
    found = {}
    for child in descendants(pid):
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{child}/stat").read_text()
            name, ppid = stat.split("(", 1)[1].rsplit(")", 1)[0], int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                found[child] = name
    return found


def _names(pids: list[int]) -> list[str]:
    """Each pid with the start of its command line, for a failure message."""
    names = []
    for pid in pids:
        with contextlib.suppress(OSError):
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:80]
            names.append(f"{pid} {command.decode(errors='replace')}")
    return names


def _lock_is_free(state_dir: Path) -> bool:
    with open(state_dir / LOCK_FILE, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


def _kill_under_a_job(
    tmp_path: Path, process_name: str
) -> tuple[ServeProcess, str, int, float, dict[int, str]]:
    """Serve, run a job to its first checkpoint, SIGKILL the embedded Ray's `process_name` and wait for
    the coordinator to exit; checks the exit status, that it was prompt and that it left no Ray process
    and its state folder free. Returns (the job's id, the killed pid)."""
    (tmp_path / "data").mkdir()
    write_blobs(tmp_path / "data" / "blobs.npz", n_train=N_TRAIN)
    spec = small_spec("npz:blobs.npz", epochs=1, numWorkers=1, checkpointEverySteps=50)
    serving = ServeProcess(tmp_path / "state", tmp_path / "data", tmp_path / "server.log")
    try:
        job = serving.client.submit(spec)
        deadline = time.monotonic() + 120
        while serving.client.get(job.id).progress.checkpoint_step < 50:
            assert time.monotonic() < deadline, serving.client.get(job.id)
            time.sleep(0.05)
        ray_processes = _children(serving.proc.pid)  # the raylet's own workers are the raylet's to end
        killed = next(pid for pid, name in ray_processes.items() if name == process_name)
        os.kill(killed, signal.SIGKILL)
        start = time.monotonic()
        assert serving.proc.wait(timeout=20) == EXIT_RAY_LOST == 1
        took = time.monotonic() - start
    finally:
        if serving.proc.poll() is None:
            serving.stop(signal.SIGKILL, 30)
        else:
            serving.client.close()
            serving.log.close()
    assert took < 8  # Ray's own core worker would end the process only 30 to 60 s later
    assert _lock_is_free(tmp_path / "state")
    deadline = time.monotonic() + 15
    while alive := [pid for pid in ray_processes if Path(f"/proc/{pid}").exists()]:
        assert time.monotonic() < deadline, f"Ray processes left behind: {_names(alive)}"
        time.sleep(0.2)
    return job.id, killed


def _fatal_lines(tmp_path: Path) -> list[str]:
    text = (tmp_path / "server.log").read_text()
    fatal = [line for line in text.splitlines() if "CRITICAL" in line]
    assert len(fatal) == 1, text
    assert "exiting with status 1; restart the coordinator on the same --state-dir" in fatal[0]
    return fatal


@pytest.mark.integration
@pytest.mark.slow
def test_the_coordinator_exits_when_its_raylet_dies_and_the_job_resumes(tmp_path: Path) -> None:
    """SIGKILL of the embedded raylet mid-job: the coordinator logs one fatal line naming the raylet's
    pid and the way out and exits 1 within seconds, its Ray processes (GCS, monitors) and its
    state-folder lock gone with it; a coordinator restarted on that folder resumes the job from its
    checkpoint to SUCCEEDED."""
    job_id, raylet = _kill_under_a_job(tmp_path, "raylet")
    assert f"the embedded Ray's raylet (pid {raylet}) died" in _fatal_lines(tmp_path)[0]

    second = ServeProcess(tmp_path / "state", tmp_path / "data", tmp_path / "server.log")
    try:
        done = wait_for(second.client, job_id, timeout_s=240)
        assert done.state == pb.SUCCEEDED, done.message
        assert done.progress.step == done.progress.total_steps
    finally:
        second.stop(signal.SIGTERM, 60)


@pytest.mark.integration
@pytest.mark.slow
def test_the_coordinator_exits_when_its_gcs_dies(tmp_path: Path) -> None:
    """SIGKILL of the embedded Ray's GCS mid-job: as for the raylet, one fatal line naming the GCS's pid
    and exit 1 within seconds (Ray's core worker would end the process after 60 s, with jobs stuck
    meanwhile), with nothing of Ray left and the state folder free."""
    _, gcs = _kill_under_a_job(tmp_path, "gcs_server")
    assert f"the embedded Ray's GCS (pid {gcs}) died (exit status -9)" in _fatal_lines(tmp_path)[0]


def test_a_lost_cluster_gcs_is_logged_once_and_so_is_its_return(caplog) -> None:
    """GcsProbe on a real listening socket: nothing while it answers, one ERROR naming the address and
    Ray's 60 s when it stops, and a WARNING when it answers again."""
    caplog.set_level(logging.WARNING, logger="service.ray_watchdog")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    probe = GcsProbe(f"127.0.0.1:{port}", interval_s=1.0)
    probe.check()
    assert caplog.records == []
    listener.close()
    probe.check()
    probe.check()
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "ERROR",
            f"the Ray cluster's GCS at 127.0.0.1:{port} does not answer (Connection refused): no job can "
            "start, train or checkpoint; unless it is back within about 60 s Ray ends this coordinator "
            "(restart it and its jobs resume from their checkpoints)",
        )
    ]
    caplog.clear()
    with socket.create_server(("127.0.0.1", port)):
        probe.check()
        probe.check()
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", f"the Ray cluster's GCS at 127.0.0.1:{port} answers again, after 0 s")
    ]


@pytest.mark.integration
@pytest.mark.ray
def test_a_coordinator_on_a_cluster_probes_its_gcs(ray_session, tmp_path: Path) -> None:
    """With --ray-address the coordinator probes the GCS Ray is connected to, until it stops."""
    import ray

    from tests.conftest import start_coordinator

    def probing() -> bool:
        return any(thread.name == "gcs-probe" for thread in threading.enumerate())

    assert not probing()
    running = start_coordinator(tmp_path, metrics_port=-1, ray_address=ray.get_runtime_context().gcs_address)
    try:
        assert probing()
    finally:
        running.stop(grace_s=1.0)
    assert not probing()
