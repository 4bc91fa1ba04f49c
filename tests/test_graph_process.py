"""Set-up of the processes that take part in a compiled graph."""

from __future__ import annotations

from ray.experimental.channel.common import ChannelContext

from workers.graph_process import skip_torch_probe


def test_skip_torch_probe_tells_ray_there_is_no_torch_without_importing_it() -> None:
    """Ray's graphs ask `torch_available` before their first step and import torch (about 1 s per
    process) when it says yes; after skip_torch_probe it says no, whether torch is installed or not."""
    context = ChannelContext.get_current()
    saved = context._torch_available
    try:
        context._torch_available = None  # not probed yet, as in a fresh actor
        skip_torch_probe()
        assert context.torch_available is False
        context._torch_available = True  # a process that already probed and found torch is left alone
        skip_torch_probe()
        assert context.torch_available is True
    finally:
        context._torch_available = saved
