"""tests/netns.py: loopback-only namespaces for the multi-node tests, and a clear reason when they
cannot be made (so those tests skip locally and fail under CI with that reason)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import require
from tests.netns import loopback_namespace, why_unavailable

ROOT = Path(__file__).resolve().parent.parent


def test_a_namespace_has_only_loopback_up_and_is_removed_after() -> None:
    """Inside the namespace `lo` is the only link and it is up; on exit the namespace is gone."""
    reason = why_unavailable()
    require(reason is None, f"loopback namespaces unavailable here: {reason}")
    with loopback_namespace() as inside:
        name = inside[-1]
        links = subprocess.run([*inside, "ip", "-o", "link"], capture_output=True, text=True, check=True)
        assert name in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    names = [line.split(":")[1].strip() for line in links.stdout.splitlines()]
    assert names == ["lo"]
    assert ",UP," in links.stdout or ",UP>" in links.stdout
    assert name not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_without_cap_sys_admin_the_reason_is_ips_own_error() -> None:
    """Root without CAP_SYS_ADMIN (as in an unprivileged container) gets the failing `ip` command and
    its message as the reason, not an exception."""
    require(os.geteuid() == 0 and shutil.which("setpriv") is not None, "needs root and util-linux's setpriv")
    drop = ["setpriv", "--inh-caps=-sys_admin", "--bounding-set=-sys_admin"]
    probe = "from tests.netns import why_unavailable; print(why_unavailable())"
    done = subprocess.run(
        [*drop, sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("`ip netns add gradfleet-")
    assert "Operation not permitted" in done.stdout
