"""Shared fixtures: a fresh store per test and the documented answers, hard-coded from the seed."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, Iterator, NamedTuple, Tuple

import pytest

from ms_auth import CreatedKey, Store

DAY_MS = 86_400_000

# The seed's documented bodies (shared/seed/authentication.txt): status, code, message.
DOCUMENTED: Dict[str, Tuple[int, str]] = {
    "api_key_missing": (401, "API key is missing."),
    "api_key_invalid": (401, "API key is invalid."),
    "api_key_expired": (401, "API key has expired."),
    "api_key_revoked": (401, "API key has been revoked."),
    "api_key_quota_exceeded": (429, "API key quota has been exceeded."),
    "rate_limit_exceeded": (429, "Too many requests. Please try again later."),
}


def documented_body(code: str) -> Dict[str, Any]:
    http, message = DOCUMENTED[code]
    return {"success": False, "error": {"code": code, "message": message, "httpStatus": http}}


def documented_bytes(code: str) -> bytes:
    return json.dumps(documented_body(code), separators=(",", ":")).encode()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def next_utc_midnight_ms(t_ms: int) -> int:
    return (t_ms // DAY_MS + 1) * DAY_MS


def ceil_s(ms: int) -> int:
    return -(-ms // 1000)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "keys.db") as s:
        yield s


class Keys(NamedTuple):
    """One key per documented answer (the quota and rate keys still have one request left)."""

    ok: CreatedKey
    expired: CreatedKey
    revoked: CreatedKey
    quota: CreatedKey
    rate: CreatedKey


def make_keys(store: Store) -> Keys:
    t = now_ms()
    ok = store.create_key(plan="pro", name="ok", quota=(1000, "daily"), rate_limit=(100, 60_000))
    # Created "in the past" so that it has already expired now, whatever the library allows.
    expired = store.create_key(plan="pro", now_ms=t - 20_000, expires_at_ms=t - 10_000)
    revoked = store.create_key(plan="pro")
    store.revoke(revoked.id)
    quota = store.create_key(plan="free", quota=(1, "daily"), rate_limit=None)
    rate = store.create_key(plan="free", rate_limit=(1, 60_000))
    return Keys(ok, expired, revoked, quota, rate)
