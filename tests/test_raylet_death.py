"""The embedded Ray's raylet dying under a running job: `gradfleet serve` says so and exits 1 at once,
releasing its state folder, and a restart on that folder finishes the job from its checkpoint."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from gradfleet.v1 import coordinator_pb2 as pb
from service.ray_watchdog import RayletWatchdog
from service.server import EXIT_RAY_LOST
from service.startup import LOCK_FILE
from tests.helpers import ServeProcess, descendants, small_spec, wait_for, write_blobs

N_TRAIN = 20000  # 400 steps at batch 50: still training when the raylet is killed


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen(["sleep", "60"])


def test_the_watchdog_reports_a_dead_process_once() -> None:
    """The watchdog calls back with the pid and exit status of a process killed under it."""
    process = _sleeper()
    deaths: list[tuple[int, int]] = []
    watchdog = RayletWatchdog(process, lambda pid, code: deaths.append((pid, code)), interval_s=0.05).start()
    process.kill()
    deadline = time.monotonic() + 5
    while not deaths and time.monotonic() < deadline:
        time.sleep(0.05)
    watchdog.stop()
    assert deaths == [(process.pid, -signal.SIGKILL)]


def test_a_stopped_watchdog_stays_quiet() -> None:
    """After stop() (a planned ray.shutdown) the process may end without a callback."""
    process = _sleeper()
    deaths: list[int] = []
    watchdog = RayletWatchdog(process, lambda pid, code: deaths.append(pid), interval_s=0.05).start()
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


@pytest.mark.integration
@pytest.mark.slow
def test_the_coordinator_exits_when_its_raylet_dies_and_the_job_resumes(tmp_path: Path) -> None:
    """SIGKILL of the embedded raylet mid-job: the coordinator logs one fatal line naming the raylet's
    pid and the way out and exits 1 within seconds, its Ray processes (GCS, monitors) and its
    state-folder lock gone with it; a coordinator restarted on that folder resumes the job from its
    checkpoint to SUCCEEDED."""
    (tmp_path / "data").mkdir()
    write_blobs(tmp_path / "data" / "blobs.npz", n_train=N_TRAIN)
    spec = small_spec("npz:blobs.npz", epochs=1, numWorkers=1, checkpointEverySteps=50)
    state_dir, log = tmp_path / "state", tmp_path / "server.log"
    first = ServeProcess(state_dir, tmp_path / "data", log)
    try:
        job = first.client.submit(spec)
        deadline = time.monotonic() + 120
        while first.client.get(job.id).progress.checkpoint_step < 50:
            assert time.monotonic() < deadline, first.client.get(job.id)
            time.sleep(0.05)
        ray_processes = _children(first.proc.pid)  # the raylet's own workers are the raylet's to end
        raylet = next(pid for pid, name in ray_processes.items() if name == "raylet")
        os.kill(raylet, signal.SIGKILL)
        start = time.monotonic()
        assert first.proc.wait(timeout=20) == EXIT_RAY_LOST == 1
        took = time.monotonic() - start
    finally:
        if first.proc.poll() is None:
            first.stop(signal.SIGKILL, 30)
        else:
            first.client.close()
            first.log.close()
    assert took < 8  # Ray's own core worker would end the process only some 30 s later
    text = log.read_text()
    fatal = [line for line in text.splitlines() if "CRITICAL" in line]
    assert len(fatal) == 1, text
    assert f"the embedded Ray's raylet (pid {raylet}) died" in fatal[0]
    assert "exiting with status 1; restart the coordinator on the same --state-dir" in fatal[0]
    assert _lock_is_free(state_dir)
    deadline = time.monotonic() + 15
    while alive := [pid for pid in ray_processes if Path(f"/proc/{pid}").exists()]:
        assert time.monotonic() < deadline, f"Ray processes left behind: {_names(alive)}"
        time.sleep(0.2)

    second = ServeProcess(state_dir, tmp_path / "data", log)
    try:
        done = wait_for(second.client, job.id, timeout_s=240)
        assert done.state == pb.SUCCEEDED, done.message
        assert done.progress.step == done.progress.total_steps
    finally:
        second.stop(signal.SIGTERM, 60)
