"""A network namespace with only loopback, made for one run and removed after it.

Ray binds the machine's own interface address even when told 127.0.0.1; inside a namespace that has
only `lo` it has nothing else to bind, so a test cluster's traffic stays on this machine. Needs root
and iproute2 (CI has both)."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager


def why_unavailable() -> str | None:
    """None when loopback-only namespaces can be made here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "making a network namespace needs root"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    return None


@contextmanager
def loopback_namespace() -> Iterator[list[str]]:
    """Yields the command prefix that runs a program inside a fresh loopback-only namespace."""
    name = f"gradfleet-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield ["ip", "netns", "exec", name]
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)
