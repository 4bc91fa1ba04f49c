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
