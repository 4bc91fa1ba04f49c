"""Set-up for a process that takes part in a compiled Ray graph (a worker or a parameter server)."""

from __future__ import annotations


def skip_torch_probe() -> None:
    """Keep Ray's compiled graphs from importing torch in this process.

    When torch is installed, a graph's first step imports it in every participant (about 1 s, and
    some 200 MB each) just to pick a device for torch tensors; ours carry numpy arrays only. The
    flag is private to Ray, so a Ray without it leaves the probe (slow, still correct) in place.
    """
    try:
        from ray.experimental.channel.common import ChannelContext
    except ImportError:
        return
    context = ChannelContext.get_current()
    if getattr(context, "_torch_available", None) is None:
        context._torch_available = False
