"""Small helpers for the sentences of job messages."""

from __future__ import annotations


def plural(count: int, noun: str) -> str:
    """`count` and `noun`, with an s unless there is exactly one: "1 worker", "2 workers"."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def clause(text: object) -> str:
    """`text` without a final full stop, to go on with "; ...": Ray's error lines end in one, and
    "task.; replaced" reads as a typo. An ellipsis (a shortened line) is kept."""
    text = str(text).rstrip()
    return text[:-1] if text.endswith(".") and not text.endswith("..") else text


def idle_workers(num_workers: int, micro_shards: int) -> int:
    """Workers that get no micro-shard: each computes whole micro-shards of the batch, so those
    beyond `micro_shards` hold a CPU and do nothing."""
    return max(num_workers - micro_shards, 0)


def idle_workers_note(num_workers: int, micro_shards: int, batch_size: int) -> str:
    """Says how many of `num_workers` idle and what to change; "" when none does."""
    idle = idle_workers(num_workers, micro_shards)
    if not idle:
        return ""
    fix = f"resubmit with micro_shards {num_workers} or more, or " if batch_size >= num_workers else ""
    return (
        f"{idle} of the {num_workers} workers {'is' if idle == 1 else 'are'} idle: a batch is split "
        f"into micro_shards {micro_shards}, and each worker computes whole micro-shards; to use them "
        f"all, {fix}scale to {plural(micro_shards, 'worker')}"
    )
