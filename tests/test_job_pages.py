"""ListJobs page tokens: opaque (the last job's id, never a row number that would count other principals'
jobs), valid only for the principal that got them, and anything else refused naming page_token."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.errors import InvalidRequest
from service.jobs import JobStore
from tests.helpers import small_spec


def _pages(store: JobStore, owner: str | None, size: int) -> tuple[list[str], list[str]]:
    """(every job id paged through, newest first; the tokens handed out)."""
    seen, tokens, token = [], [], ""
    while True:
        page, token = store.list(page_size=size, page_token=token, owner=owner)
        seen += [job.id for job in page]
        if not token:
            return seen, tokens
        tokens.append(token)


def test_page_tokens_reveal_no_counts_and_stay_with_their_principal(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    owners = ["alice", "bob", "alice", "bob", "bob", "alice"]
    ids = [
        store.create(small_spec("npz:d.npz", name=f"j{i}"), owner=owner)[0].id
        for i, owner in enumerate(owners)
    ]
    alices = [job_id for job_id, owner in zip(ids, owners, strict=True) if owner == "alice"][::-1]

    seen, tokens = _pages(store, "alice", 1)
    assert seen == alices
    assert tokens == alices[:-1]  # her own job ids: nothing she could not see anyway
    assert _pages(store, None, 4)[0] == ids[::-1]  # an admin pages through everyone's
    for garbage in ("-1", "0", "7", "abc", ids[1]):  # ids[1] is bob's: refused like garbage
        with pytest.raises(InvalidRequest, match=r"^page_token: not a token this server issued"):
            store.list(page_size=1, page_token=garbage, owner="alice")
    store.close()
