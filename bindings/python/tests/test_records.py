"""Key records are frozen dataclasses with typed fields (issue 27, item 5): mypy --strict sees a
typo'd field, and the dict access of earlier versions still answers, with a DeprecationWarning."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ms_auth import KeyRecord, KeyState, KeyUsage, Quota, RateLimit, Store

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def test_records_have_typed_fields(store: Store) -> None:
    created = store.create_key(
        name="billing", plan="pro", new_plan=True, quota=(500, "monthly"),
        rate_limit=(10, 1000, 20), meta={"team": "payments"}, now_ms=T0,
    )
    for rec in (created.record, store.get(created.id), store.list()[0],
                store.update(created.id, name="billing2")):
        assert isinstance(rec, KeyRecord) and rec.id == created.id
        assert (rec.env, rec.plan, rec.created_at_ms) == ("live", "pro", T0)
        assert rec.quota == Quota(500, "monthly")
        assert rec.rate_limit == RateLimit(10, 1000, 20)
        assert rec.usage == KeyUsage(period_start_ms=rec.usage.period_start_ms, used=0, total=0,
                                     last_used_at_ms=None)
        assert rec.meta == {"team": "payments"}
        assert rec.follows_plan == ()
        assert rec.state is KeyState.ACTIVE and rec.state_reason is None
        assert rec.grace_ends_at_ms is None and rec.revoked_at_ms is None
        assert created.key.startswith(rec.prefix)
    assert store.get(created.id).created_at.year == 2026
    with pytest.raises(dataclasses.FrozenInstanceError):
        created.record.name = "x"  # type: ignore[misc]


def test_a_rotated_record_names_its_partner_and_grace(store: Store) -> None:
    old = store.create_key(now_ms=T0)
    new = store.rotate(old.id, grace_ms=1000, now_ms=T0)
    was = store.get(old.id)
    assert (was.rotated_to, was.revoke_at_ms) == (new.id, T0 + 1000)
    assert new.record.rotated_from == old.id


def test_dict_access_still_answers_with_a_deprecation_warning(store: Store) -> None:
    created = store.create_key(quota=(5, "daily"), rate_limit=(2, 3000), now_ms=T0)
    rec = created.record
    with pytest.warns(DeprecationWarning, match=r'record\["usage"\] is deprecated: use record.usage'):
        assert rec["usage"]["used"] == 0
    with pytest.warns(DeprecationWarning):
        assert rec["quota"] == {"limit": 5, "period": "daily"}
    with pytest.warns(DeprecationWarning):
        assert rec["state"] is KeyState.ACTIVE
    with pytest.warns(DeprecationWarning):
        assert rec.get("nope", 7) == 7 and "id" in rec and "key" not in rec
    with pytest.raises(KeyError), pytest.warns(DeprecationWarning):
        rec["plann"]


def test_as_dict_is_the_json_record(store: Store) -> None:
    created = store.create_key(rate_limit=(2, 3000, 2), meta={"a": [1]}, now_ms=T0)
    plain = created.record.as_dict()
    assert json.loads(json.dumps(plain)) == plain  # plain JSON types only
    assert plain["rate_limit"] == {"limit": 2, "window_ms": 3000, "burst": 2}
    assert plain["state"] == "active" and plain["follows_plan"] == ["quota"] and plain["meta"] == {"a": [1]}
    assert set(plain) == {f.name for f in dataclasses.fields(KeyRecord)}


def test_mypy_strict_sees_a_typoed_field(tmp_path: Path) -> None:
    """What a typed record is for: a misspelt field fails type checking, before any request."""
    good = tmp_path / "good.py"
    good.write_text(textwrap.dedent("""\
        from typing import Optional
        from ms_auth import KeyState, Store
        def f(store: Store) -> Optional[int]:
            rec = store.get("id")
            assert rec.state is KeyState.ROTATING
            return rec.grace_ends_at_ms if rec.quota is None else rec.quota.limit + rec.usage.used
        """))
    bad = tmp_path / "bad.py"
    bad.write_text(textwrap.dedent("""\
        from ms_auth import Store
        def f(store: Store) -> int:
            rec = store.get("id")
            return rec.usage.usedd + len(rec.plann)
        """))
    cmd = [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache")]
    ok = subprocess.run(cmd + [str(good)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout
    ko = subprocess.run(cmd + [str(bad)], capture_output=True, text=True)
    assert ko.returncode == 1
    assert '"KeyUsage" has no attribute "usedd"' in ko.stdout
    assert '"KeyRecord" has no attribute "plann"' in ko.stdout


def test_a_record_without_its_state_is_an_internal_error(store: Store) -> None:
    """A library whose records lack a field this binding reads (``state``) is named, not read as a
    state called "None"."""
    from ms_auth import InternalError, _records

    plain = store.create_key(now_ms=T0).record.as_dict()
    del plain["state"]
    with pytest.raises(InternalError, match="'state'"):
        _records._record(plain)
