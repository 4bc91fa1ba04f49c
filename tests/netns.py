"""A network namespace with only loopback, made for one run and removed after it.

Ray binds the machine's own interface address even when told 127.0.0.1; inside a namespace that has
only `lo` it has nothing else to bind, so a test cluster's traffic stays on this machine. Needs root
and iproute2 (CI has both)."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager


@functools.cache
def why_unavailable() -> str | None:
    """None when loopback-only namespaces can be made here, else the reason they cannot. Tries once
    (cached): being root is not enough in a container without CAP_SYS_ADMIN."""
    if os.geteuid() != 0:
        return "making a network namespace needs root"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed (apt-get install iproute2)"
    try:
        with loopback_namespace() as inside:
            subprocess.run([*inside, "true"], check=True, capture_output=True, text=True)
        return None
    except subprocess.CalledProcessError as failed:
        command = " ".join(failed.cmd)
        return f"`{command}` failed: {(failed.stderr or '').strip() or f'exit status {failed.returncode}'}"


@contextmanager
def loopback_namespace() -> Iterator[list[str]]:
    """Yields the command prefix that runs a program inside a fresh loopback-only namespace."""
    name = f"gradfleet-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    _ip("netns", "add", name)
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        yield ["ip", "netns", "exec", name]
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False, capture_output=True)


def _ip(*args: str) -> None:
    """Run `ip ARGS`; a failure raises CalledProcessError carrying ip's own message in stderr."""
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)
