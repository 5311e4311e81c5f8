"""The key list by state and in pages (issue 27, item 5): list_keys returns a typed KeyPage with the
cursor of the next page, iter_keys walks every page; against the real library."""

from __future__ import annotations

from typing import List

import pytest

from conftest import DAY_MS, now_ms
from ms_auth import InvalidArgumentError, KeyPage, KeyRecord, KeyState, Store


def make(store: Store) -> List[str]:
    """Eight keys: the ids of the revoked and expired ones (5), in the order they were created."""
    t = now_ms()
    chosen = []
    for i in range(8):
        if i == 6:
            old = store.create_key(name=f"k{i}", now_ms=t - 10 * DAY_MS, expires_at_ms=t - DAY_MS)
            chosen.append(old.id)
            continue
        created = store.create_key(name=f"k{i}")
        if i % 2:
            store.revoke(created.id, reason="test")
            chosen.append(created.id)
    return chosen


def test_list_keys_pages_through_the_keys_in_the_given_states(store: Store) -> None:
    chosen = make(store)
    first = store.list_keys(state=["revoked", KeyState.EXPIRED], limit=3)
    assert isinstance(first, KeyPage)
    assert len(first) == 3 and all(isinstance(r, KeyRecord) for r in first)
    assert isinstance(first.next, str)
    rest = store.list_keys(state=("revoked", "expired"), limit=3, after=first.next)
    assert rest.next is None
    assert [r.id for r in first] + [r.id for r in rest.keys] == chosen
    assert {r.state for r in rest} <= {KeyState.REVOKED, KeyState.EXPIRED}
    # One state by name; no limit: every matching key, and no next page.
    revoked = store.list_keys(state="revoked")
    assert (len(revoked), revoked.next) == (4, None)
    assert all(r.state is KeyState.REVOKED and r.state_reason == "test" for r in revoked)
    assert len(store.list_keys()) == 8
    assert [r.id for r in store.list_keys(state=KeyState.ACTIVE)] == [
        r.id for r in store.list() if r.state is KeyState.ACTIVE
    ]


def test_iter_keys_walks_every_page_once(store: Store) -> None:
    chosen = make(store)
    assert [r.id for r in store.iter_keys(state=["revoked", "expired"], page_size=2)] == chosen
    assert [r.id for r in store.iter_keys(page_size=3)] == [r.id for r in store.list()]
    assert list(store.iter_keys(plan="nosuchplan")) == []


def test_bad_states_limits_and_cursors_raise_invalid_argument(store: Store) -> None:
    make(store)
    for kwargs, says in [
        ({"limit": 0}, "limit must be an integer from 1 to 1000"),
        ({"limit": 1001}, "limit must be an integer from 1 to 1000"),
        ({"after": "nope"}, "after is not a cursor this list gave"),
        ({"state": "actve"}, "state must be one of active"),
        ({"state": []}, "state names no state"),
    ]:
        with pytest.raises(InvalidArgumentError, match=says):
            store.list_keys(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="limit must be"):
        next(store.iter_keys(page_size=5000))
