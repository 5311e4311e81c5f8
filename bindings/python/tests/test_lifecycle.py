"""Key lifecycle and monitoring (store options, actor, rotation, plans, policies, audit, usage,
metrics) against the real library, in this process and across processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import pytest

from ms_auth import (
    DEFAULT,
    AbusePolicy,
    AuditEvent,
    InvalidArgumentError,
    KeyNotFoundError,
    KeyState,
    Plan,
    Policies,
    Quota,
    RateLimit,
    Status,
    Store,
    StoreNotOpenError,
    StoreUnavailableError,
    Usage,
    UsageDay,
    _store,
)
from conftest import DAY_MS, now_ms

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z: a fixed clock for exact figures
T0_DT = datetime(2026, 1, 1, tzinfo=timezone.utc)
HOUR_MS = 3_600_000


def run_child(script: str, *args: str) -> str:
    """Runs a Python program in another process (another copy of the library, its own handle)."""
    p = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        capture_output=True, text=True, timeout=60,
    )
    assert p.returncode == 0, p.stderr
    return p.stdout


def refused(call: Callable[[], object], *fragments: str) -> InvalidArgumentError:
    """``call`` raises InvalidArgumentError whose detail holds each fragment of the message."""
    with pytest.raises(InvalidArgumentError) as info:
        call()
    for fragment in fragments:
        assert fragment in info.value.detail, info.value.detail
    return info.value


# -- store options --------------------------------------------------------------------------------


def test_store_options_are_checked_by_the_library(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    # The largest values the library takes, given as timedeltas: converted to exact milliseconds.
    with Store(path, flush_interval_ms=timedelta(hours=1), durability="strict",
               busy_timeout_ms=timedelta(minutes=10)) as s:
        created = s.create_key(rate_limit=None)
        assert s.check(created.key).ok
    with Store(path, flush_interval_ms=0, durability="batched", busy_timeout_ms=0) as s:
        assert s.check(created.key).ok
    err = refused(lambda: Store(path, flush_interval_ms=timedelta(hours=1, milliseconds=1)),
                  "flush_interval_ms must be an integer from 0 to 3600000")
    assert err.operation == f"open {path}"
    refused(lambda: Store(path, busy_timeout_ms=600_001),
            "busy_timeout_ms must be an integer from 0 to 600000")
    refused(lambda: Store(path, flush_interval_ms=-1), "flush_interval_ms")
    refused(lambda: Store(path, durability="eventual"),  # type: ignore[arg-type]
            'durability must be "batched" or "strict"')
    with pytest.raises(TypeError):
        Store(path, flush_interval_ms="1s")  # type: ignore[arg-type]


def test_create_false_opens_only_an_existing_store(tmp_path: Path) -> None:
    typo = tmp_path / "typo.db"
    with pytest.raises(StoreUnavailableError) as info:
        Store(typo, create=False)
    assert str(typo) in info.value.detail and "no store" in info.value.detail, info.value.detail
    assert list(tmp_path.iterdir()) == [], "nothing was created"
    path = tmp_path / "keys.db"
    with Store(path, create=True) as s:
        created = s.create_key()
    with Store(path, create=False) as s:
        assert s.get(created.id).id == created.id
    refused(lambda: Store(path, create=1),  # type: ignore[arg-type]
            "create must be true or false")


def hold_write_lock(path: Path) -> "subprocess.Popen[str]":
    """Another process that holds the database's write lock until its stdin is closed (another
    SQLite in another process is fine; only not in this one)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import sqlite3, sys
            db = sqlite3.connect(sys.argv[1], isolation_level=None)
            db.execute("BEGIN IMMEDIATE")
            print("locked", flush=True)
            sys.stdin.read()
            db.execute("ROLLBACK")
        """), str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
    return holder


def test_strict_durability_and_busy_timeout_under_a_held_write_lock(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    with Store(path, durability="strict", busy_timeout_ms=timedelta(milliseconds=300)) as strict, \
            Store(path, busy_timeout_ms=300) as batched:
        created = strict.create_key(rate_limit=None)
        holder = hold_write_lock(path)
        try:
            # Batched: a check never waits for the database.
            assert batched.check(created.key).ok
            # Strict: the count must reach the database before the answer; it waits out the
            # busy timeout (300 ms, not the default 5 s) and fails.
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError):
                strict.check(created.key)
            assert 0.25 <= time.monotonic() - started < 4.0
            # Admin calls wait the busy timeout too.
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError):
                batched.create_key()
            assert 0.25 <= time.monotonic() - started < 4.0
        finally:
            assert holder.stdin is not None
            holder.stdin.close()
            holder.wait(30)
        assert strict.check(created.key).ok


@pytest.mark.parametrize("durability, survives", [("strict", True), ("batched", False)])
def test_counts_after_a_power_loss(tmp_path: Path, durability: str, survives: bool) -> None:
    path = tmp_path / "keys.db"
    with Store(path) as s:
        created = s.create_key(rate_limit=None)
    # A process checks and dies without closing (no final flush); then the counters file is lost,
    # as after a power loss, and only what reached the database is left.
    run_child(
        """
        import os, sys
        from ms_auth import Store
        store = Store(sys.argv[1], durability=sys.argv[2], flush_interval_ms=3_600_000)
        assert all(store.check(sys.argv[3]).ok for _ in range(5))
        os._exit(0)
        """,
        str(path), durability, created.key,
    )
    Path(str(path.resolve()) + "-counters").unlink()
    with Store(path) as s:
        total = s.get(created.id).usage.total
    if survives:
        assert total == 5
    else:
        assert total < 5  # at most a flush turn taken at the first check


# -- actor and audit ------------------------------------------------------------------------------


def test_set_actor_names_the_audit_actor(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    with Store(path) as portal, Store(path) as other:
        portal.set_actor("portal:alice@example.com")
        created = portal.create_key(now_ms=T0)
        portal.update(created.id, name="billing")
        other.revoke(created.id, now_ms=T0 + 1)
        events = portal.audit(key_id=created.id)
        assert [(e.action, e.actor) for e in events[:2]] == [
            ("key.create", "portal:alice@example.com"),
            ("key.update", "portal:alice@example.com"),
        ]
        # Without set_actor the library names the program, its pid and uid.
        assert events[2].action == "key.revoke" and str(os.getpid()) in events[2].actor
        refused(lambda: portal.set_actor("x" * 201), "actor is longer than 200 bytes")
        refused(lambda: portal.set_actor("portal:alice\0admin"), "NUL")
        later = portal.create_key()
        assert [e.actor for e in portal.audit(key_id=later.id)] == ["portal:alice@example.com"]


def test_audit_events_and_filters(store: Store) -> None:
    store.set_actor("ops:bob")
    a = store.create_key(plan="pro", now_ms=T0)
    store.revoke(a.id, now_ms=T0 + 1)
    store.put_plan("pro", now_ms=T0 + 3)
    store.set_policy(idle_days=90, now_ms=T0 + 4)
    events = store.audit()
    assert [e.action for e in events] == ["key.create", "key.revoke", "plan.put", "policy.set"]
    assert all(isinstance(e, AuditEvent) and e.actor == "ops:bob" for e in events)
    assert [e.seq for e in events] == sorted(e.seq for e in events)  # oldest first
    first = events[0]
    assert first.key_id == a.id and first.at_ms == T0 and first.at == T0_DT
    assert a.key not in repr(events)  # never a plaintext key
    assert events[1].at_ms == T0 + 1 and events[1].detail["reason"] == "manual"
    assert events[2].key_id is None and events[2].detail["name"] == "pro"
    assert [e.action for e in store.audit(key_id=a.id)] == ["key.create", "key.revoke"]
    assert [e.action for e in store.audit(since_ms=T0_DT + timedelta(milliseconds=3))] == [
        "plan.put", "policy.set"]
    assert [e.action for e in store.audit(limit=1)] == ["policy.set"]  # the last ones
    assert store.audit(key_id="key_none") == []
    refused(lambda: store.audit(limit=0), "limit")


# -- rotation -------------------------------------------------------------------------------------


def test_rotate_shares_the_quota_and_ends_the_old_key_after_the_grace(store: Store) -> None:
    old = store.create_key(plan="pro", meta={"team": "billing"}, quota=(5, "daily"),
                           rate_limit=None, now_ms=T0)
    for _ in range(3):
        assert store.check(old.key, now_ms=T0).ok
    new = store.rotate(old.id, grace_ms=timedelta(hours=1), now_ms=T0_DT)
    assert new.key != old.key and new.key.startswith("ms_live_")
    assert new.key not in repr(new)
    rec = new.record
    assert not hasattr(rec, "key") and rec.id == new.id != old.id
    assert (rec.plan, rec.meta, rec.quota) == ("pro", {"team": "billing"}, Quota(5, "daily"))
    assert rec.rotated_from == old.id
    assert rec.usage.used == 3  # the customer's quota is not reset
    was = store.get(old.id)
    assert (was.rotated_to, was.revoke_at_ms) == (new.id, T0 + HOUR_MS)

    r = store.check(new.key, now_ms=T0)
    assert r.ok and r.quota_remaining == 1 and r.key_id == new.id
    assert store.check(old.key, now_ms=T0 + HOUR_MS - 1).ok  # the grace
    assert store.check(new.key, now_ms=T0 + HOUR_MS - 1).status is Status.API_KEY_QUOTA_EXCEEDED
    assert store.check(old.key, now_ms=T0 + HOUR_MS).status is Status.API_KEY_REVOKED
    assert store.check(new.key, now_ms=T0 + DAY_MS).ok


def test_rotate_default_grace_and_refusals(store: Store) -> None:
    a = store.create_key(now_ms=T0)
    b = store.rotate(a.id, now_ms=T0)
    assert store.get(a.id).revoke_at_ms == T0 + 24 * HOUR_MS  # the library's default
    c = store.rotate(b.id, grace_ms=0, now_ms=T0 + 5)
    assert store.check(b.key, now_ms=T0 + 5).status is Status.API_KEY_REVOKED  # at once
    assert store.check(c.key, now_ms=T0 + 5).ok
    refused(lambda: store.rotate(a.id, now_ms=T0), "already rotated")
    gone = store.create_key(now_ms=T0)
    store.revoke(gone.id, now_ms=T0)
    refused(lambda: store.rotate(gone.id, now_ms=T0), "revoked")
    refused(lambda: store.rotate(c.id, grace_ms=-1, now_ms=T0), "grace_ms")
    refused(lambda: store.rotate(c.id, grace_ms=timedelta(days=367), now_ms=T0), "grace_ms")
    with pytest.raises(KeyNotFoundError):
        store.rotate("key_nope")
    refused(lambda: store.rotate(c.id + "\0x"), "NUL")


# -- plans ----------------------------------------------------------------------------------------


def test_put_plan_and_plans(store: Store) -> None:
    pro = store.put_plan("pro", quota=(100, "daily"), rate_limit=(10, timedelta(seconds=1)),
                         lifetime_ms=timedelta(days=30), now_ms=T0_DT)
    assert pro == Plan(name="pro", quota=Quota(100, "daily"), rate_limit=RateLimit(10, 1000, 10),
                       lifetime_ms=30 * DAY_MS, updated_at_ms=T0, keys=0)
    assert pro.lifetime == timedelta(days=30) and pro.updated_at == T0_DT
    assert pro.rate_limit is not None and pro.rate_limit.window == timedelta(seconds=1)

    # Absent rate limit: the store default; None: none; quota and lifetime left out: none.
    default = store.put_plan("default", now_ms=T0)
    assert (default.quota, default.rate_limit, default.lifetime_ms, default.lifetime) == (
        None, RateLimit(60, 60_000, 60), None, None)
    free = store.put_plan("free", rate_limit=None, now_ms=T0)
    assert free.rate_limit is None

    follower = store.create_key(plan="pro", now_ms=T0)
    own = store.create_key(plan="pro", quota=(1, "daily"), now_ms=T0)
    assert follower.record.expires_at_ms == T0 + 30 * DAY_MS  # the plan's lifetime
    assert follower.record.follows_plan == ("quota", "rate_limit")
    assert own.record.follows_plan == ("rate_limit",)

    plans = store.plans()
    assert [p.name for p in plans] == ["default", "free", "pro"]
    assert all(isinstance(p, Plan) for p in plans)
    assert plans[2].keys == 2 and plans[2].quota == Quota(100, "daily")
    # A plan's answer can be put back as it is (dataclasses are taken for the limits).
    again = store.put_plan("pro", quota=plans[2].quota, rate_limit=plans[2].rate_limit,
                           lifetime_ms=plans[2].lifetime, now_ms=T0 + 1)
    assert again == Plan("pro", Quota(100, "daily"), RateLimit(10, 1000, 10), 30 * DAY_MS,
                         T0 + 1, 2)


def test_put_plan_refusals(store: Store) -> None:
    refused(lambda: store.put_plan("", now_ms=T0), "plan.name")
    refused(lambda: store.put_plan("p" * 64, now_ms=T0), "plan.name")
    refused(lambda: store.put_plan("p", lifetime_ms=0, now_ms=T0), "lifetime_ms")
    refused(lambda: store.put_plan("p", quota=(1, "weekly"), now_ms=T0), "period")
    refused(lambda: store.put_plan("p", rate_limit=(0, 1000), now_ms=T0), "rate_limit")
    refused(lambda: store.put_plan("p", now_ms=1_767_225_600), "now_ms")  # seconds
    with pytest.raises(TypeError):
        store.put_plan("p", quota=5)  # type: ignore[arg-type]
    assert store.plans() == []


def test_a_plan_put_in_another_process_is_in_force_on_the_next_check(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    with Store(path) as server:
        server.put_plan("pro", quota=(2, "daily"), rate_limit=None, now_ms=T0)
        key = server.create_key(plan="pro", now_ms=T0)
        assert server.check(key.key, now_ms=T0).ok
        assert server.check(key.key, now_ms=T0).ok
        assert server.check(key.key, now_ms=T0).status is Status.API_KEY_QUOTA_EXCEEDED
        out = run_child(
            """
            import sys
            from ms_auth import Store
            with Store(sys.argv[1]) as admin:
                print(admin.put_plan("pro", quota=(5, "daily"), rate_limit=None).keys)
            """,
            str(path),
        )
        assert out == "1\n"
        # No reopen, no reload: this handle's very next check follows the new plan.
        r = server.check(key.key, now_ms=T0)
        assert (r.status, r.quota_limit, r.quota_remaining) == (Status.OK, 5, 2)


# -- policies -------------------------------------------------------------------------------------


def test_set_policy_and_policy(store: Store) -> None:
    assert store.policy() == Policies(idle_days=None, abuse=None, rotated="always")
    p = store.set_policy(idle_days=90)
    assert p == Policies(90, None) and p.idle == timedelta(days=90)
    p = store.set_policy(abuse=(3, timedelta(minutes=10)))
    assert p == Policies(90, AbusePolicy(3, 600_000))  # idle left as it was
    assert p.abuse is not None and p.abuse.window == timedelta(minutes=10)
    assert store.set_policy() == p  # nothing given, nothing changed
    p = store.set_policy(idle_days=None)
    assert p == Policies(None, AbusePolicy(3, 600_000))
    p = store.set_policy(idle_days=timedelta(days=7), abuse=None)
    assert p == Policies(7, None) == store.policy()
    assert store.set_policy(abuse=AbusePolicy(5, 60_000)).abuse == AbusePolicy(5, 60_000)

    refused(lambda: store.set_policy(idle_days=0), "policy.idle")
    refused(lambda: store.set_policy(idle_days=36_501), "policy.idle")
    refused(lambda: store.set_policy(abuse=(5, 10)), "policy.abuse")
    refused(lambda: store.set_policy(abuse=(0, 60_000)), "policy.abuse")
    refused(lambda: store.set_policy(idle_days=timedelta(days=1, hours=1)), "whole number of days")
    with pytest.raises(TypeError):
        store.set_policy(abuse=5)  # type: ignore[arg-type]
    assert store.policy() == Policies(7, AbusePolicy(5, 60_000))


def test_idle_keys_are_revoked_by_policy(tmp_path: Path) -> None:
    # flush_interval_ms=0: counts and policy revocations are written at every check.
    with Store(tmp_path / "keys.db", flush_interval_ms=0) as store:
        used = store.create_key(expires_at_ms=None, now_ms=T0)
        unused = store.create_key(expires_at_ms=None, now_ms=T0)
        assert store.check(used.key, now_ms=T0 + DAY_MS).ok
        store.set_policy(idle_days=30, now_ms=T0)
        assert store.check(unused.key, now_ms=T0 + 30 * DAY_MS - 1).ok
        assert store.check(used.key, now_ms=T0 + 31 * DAY_MS + 5).status is Status.API_KEY_REVOKED
        rec = store.get(used.id)
        assert (rec.revoked_reason, rec.revoked_at_ms) == ("idle", T0 + 31 * DAY_MS)
        assert [e.action for e in store.audit(key_id=used.id)][-1] == "key.revoke.policy"


def test_an_abuse_policy_set_in_another_process_revokes_here(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    with Store(path, flush_interval_ms=0) as server:
        k = server.create_key(rate_limit=(1, 60_000), now_ms=T0)
        run_child(
            """
            import sys
            from datetime import timedelta
            from ms_auth import Store
            with Store(sys.argv[1]) as admin:
                admin.set_policy(abuse=(3, timedelta(minutes=1)))
            """,
            str(path),
        )
        assert server.check(k.key, now_ms=T0).ok
        for i in range(1, 5):
            assert server.check(k.key, now_ms=T0 + i).status is Status.RATE_LIMIT_EXCEEDED
        assert server.check(k.key, now_ms=T0 + 60_000).status is Status.API_KEY_REVOKED
        rec = server.get(k.id)
        assert (rec.revoked_reason, rec.revoked_at_ms) == ("abuse", T0 + 4)


# -- usage and metrics ----------------------------------------------------------------------------


def test_usage_per_utc_day(store: Store) -> None:
    k = store.create_key(quota=(3, "daily"), rate_limit=None, now_ms=T0)
    midnight = T0 + DAY_MS
    for _ in range(3):
        assert store.check(k.key, now_ms=midnight - 1).ok
    assert store.check(k.key, now_ms=midnight - 1).status is Status.API_KEY_QUOTA_EXCEEDED
    assert store.check(k.key, now_ms=midnight).ok
    store.revoke(k.id, now_ms=midnight + 10)
    assert store.check(k.key, now_ms=midnight + 20).status is Status.API_KEY_REVOKED

    u = store.usage(k.id, T0_DT - timedelta(days=1), midnight)
    assert isinstance(u, Usage) and u.key_id == k.id
    assert u.last_used_at_ms == midnight and u.last_used_at == T0_DT + timedelta(days=1)
    assert [d.date for d in u.days] == [date(2025, 12, 31), date(2026, 1, 1), date(2026, 1, 2)]
    before, last, today = u.days
    assert all(isinstance(d, UsageDay) for d in u.days)
    assert (before.admitted, sum(before.rejected.values())) == (0, 0)
    assert last.admitted == 3 and last.start_ms == T0 and last.start == T0_DT
    assert last.rejected == {
        Status.API_KEY_EXPIRED: 0,
        Status.API_KEY_REVOKED: 0,
        Status.API_KEY_QUOTA_EXCEEDED: 1,
        Status.RATE_LIMIT_EXCEEDED: 0,
    }
    assert today.admitted == 1 and today.rejected[Status.API_KEY_REVOKED] == 1

    fresh = store.create_key(now_ms=T0)
    assert store.usage(fresh.id, T0, T0).last_used_at is None
    refused(lambda: store.usage(k.id, midnight, T0), "to_ms")
    refused(lambda: store.usage(k.id, T0, 1_767_225_600), "to_ms")  # seconds
    refused(lambda: store.usage(k.id, datetime(2026, 1, 1), T0), "naive datetime")
    with pytest.raises(KeyNotFoundError):
        store.usage("key_nope", T0, T0)


def test_metrics_text(store: Store) -> None:
    now = now_ms()  # metrics describe the present: the wall clock
    store.put_plan("pro", quota=(10, "daily"), now_ms=now)
    k = store.create_key(plan="pro", now_ms=now)
    gone = store.create_key(now_ms=now)
    store.revoke(gone.id, now_ms=now)
    store.create_key(expires_at_ms=now - 1, now_ms=now - 10)
    for _ in range(4):
        assert store.check(k.key, now_ms=now).ok
    assert store.check(gone.key, now_ms=now).status is Status.API_KEY_REVOKED
    assert store.check("not-a-key-at-all", now_ms=now).status is Status.API_KEY_INVALID
    assert store.check(None, now_ms=now).status is Status.API_KEY_MISSING
    text = store.metrics_text()
    assert isinstance(text, str) and text.endswith("\n")
    lines = text.splitlines()
    for line in [
        "# TYPE ms_auth_checks_total counter",
        'ms_auth_checks_total{status="ok"} 4',
        'ms_auth_checks_total{status="api_key_revoked"} 1',
        'ms_auth_unmatched_checks_total{status="api_key_missing"} 1',
        'ms_auth_unmatched_checks_total{status="api_key_invalid"} 1',
        'ms_auth_keys{state="active"} 1',
        'ms_auth_keys{state="expired"} 1',
        'ms_auth_keys{state="revoked"} 1',
        'ms_auth_quota_used{plan="pro"} 4',
        'ms_auth_quota_limit{plan="pro"} 10',
        "ms_auth_flush_failures_total 0",
    ]:
        assert line in lines, f"{line!r} not in\n{text}"


def test_usage_and_metrics_count_the_checks_of_other_processes(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    with Store(path) as portal:
        since = datetime.now(timezone.utc)
        k = portal.create_key(rate_limit=None)
        run_child(
            """
            import sys
            from ms_auth import Store
            with Store(sys.argv[1]) as server:
                assert all(server.check(sys.argv[2]).ok for _ in range(3))
                assert not server.check("ms_live_nope").ok
            """,
            str(path), k.key,
        )
        u = portal.usage(k.id, since, datetime.now(timezone.utc))  # two days across a midnight
        assert sum(d.admitted for d in u.days) == 3
        assert u.last_used_at is not None and u.last_used_at >= since - timedelta(milliseconds=1)
        lines = portal.metrics_text().splitlines()
        assert 'ms_auth_checks_total{status="ok"} 3' in lines  # every process
        assert 'ms_auth_unmatched_checks_total{status="api_key_invalid"} 0' in lines  # this one


# -- times, durations, strings --------------------------------------------------------------------


def test_datetimes_and_timedeltas_are_taken_for_milliseconds(store: Store) -> None:
    plus2 = timezone(timedelta(hours=2))
    c = store.create_key(now_ms=datetime(2026, 1, 1, 2, tzinfo=plus2),
                         expires_at_ms=T0_DT + timedelta(days=1),
                         rate_limit=(2, timedelta(seconds=3)))
    rec = c.record
    assert (rec.created_at_ms, rec.expires_at_ms) == (T0, T0 + DAY_MS)
    assert rec.rate_limit == RateLimit(2, 3000, 2)
    r = store.check(c.key, now_ms=T0_DT + timedelta(microseconds=1500))
    assert r.ok and r.now_ms == T0 + 1  # finer than a millisecond: dropped
    assert store.update(c.id, expires_at_ms=T0_DT).expires_at_ms == T0
    store.revoke(c.id, now_ms=T0_DT + timedelta(seconds=1))
    assert store.get(c.id).revoked_at_ms == T0 + 1000

    refused(lambda: store.check(c.key, now_ms=datetime(2026, 1, 1)), "naive datetime")
    refused(lambda: store.create_key(now_ms=datetime(2026, 1, 1)), "naive datetime")
    for bad in ("2026-01-01", 1.5, True, date(2026, 1, 1)):
        with pytest.raises(TypeError):
            store.create_key(now_ms=bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        store.rotate(c.id, grace_ms=1.5)  # type: ignore[arg-type]


def test_key_ids_with_a_nul_are_refused(store: Store) -> None:
    # C would read "key_x\0..." as "key_x": another key than the one named.
    c = store.create_key()
    for call in (
        lambda: store.get(c.id + "\0"),
        lambda: store.update(c.id + "\0x", name="n"),
        lambda: store.revoke(c.id + "\0x"),
        lambda: store.usage(c.id + "\0x", T0, T0),
    ):
        refused(call, "NUL")
    assert store.get(c.id).revoked_at_ms is None


# -- the in-flight guard --------------------------------------------------------------------------


def every_lifecycle_call(store: Store) -> Dict[str, Callable[[], object]]:
    k = store.create_key(rate_limit=None, now_ms=T0)
    return {
        "set_actor": lambda: store.set_actor("tests"),
        "rotate": lambda: store.rotate(k.id, now_ms=T0),
        "put_plan": lambda: store.put_plan("pro", now_ms=T0),
        "plans": store.plans,
        "set_policy": lambda: store.set_policy(idle_days=9, now_ms=T0),
        "policy": store.policy,
        "audit": store.audit,
        "usage": lambda: store.usage(k.id, T0, T0),
        "metrics_text": store.metrics_text,
    }


def test_lifecycle_calls_on_a_closed_store(tmp_path: Path) -> None:
    s = Store(tmp_path / "k.db")
    calls = every_lifecycle_call(s)
    s.close()
    for name, call in calls.items():
        with pytest.raises(StoreNotOpenError) as info:
            call()
        assert info.value.code == 101, name


class GuardSpy:
    """Stands in for the library in _store: records, for each native call, whether the Store's
    in-flight guard was held (a call counted in ``calls``, the handle still set)."""

    def __init__(self, real: Any, native: Any) -> None:
        self.real, self.native = real, native
        self.seen: Dict[str, List[bool]] = {}
        self.hold: Dict[str, Tuple[threading.Event, threading.Event]] = {}

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self.real, name)

        def call(*args: Any) -> Any:
            guarded = len(self.native.calls) > 0 and self.native.handle is not None
            self.seen.setdefault(name, []).append(guarded)
            if name in self.hold:
                inside, release = self.hold[name]
                inside.set()
                release.wait(10)
            return fn(*args)

        return call


LIFECYCLE_SYMBOLS = {
    "ms_store_set_actor", "ms_key_rotate", "ms_plan_put", "ms_plan_list", "ms_policy_put",
    "ms_policy_get", "ms_audit", "ms_usage", "ms_metrics_text",
}


def test_every_lifecycle_call_goes_through_the_guard(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = every_lifecycle_call(store)
    spy = GuardSpy(_store._lib, store._native)
    monkeypatch.setattr(_store, "_lib", spy)
    for call in calls.values():
        call()
    assert LIFECYCLE_SYMBOLS <= set(spy.seen)
    for name, guarded in spy.seen.items():
        if name != "ms_string_free":  # frees the copied answer, not the handle
            assert all(guarded), name


def test_close_waits_for_an_admin_call_in_progress(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.put_plan("pro", now_ms=T0)
    spy = GuardSpy(_store._lib, store._native)
    inside, release = threading.Event(), threading.Event()
    spy.hold["ms_plan_list"] = (inside, release)
    monkeypatch.setattr(_store, "_lib", spy)
    results: List[List[Plan]] = []
    caller = threading.Thread(target=lambda: results.append(store.plans()))
    caller.start()
    assert inside.wait(10)
    closer = threading.Thread(target=store.close)
    closer.start()
    deadline = time.monotonic() + 10
    while not store.closed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert store.closed
    closer.join(0.3)
    assert closer.is_alive(), "close() returned while plans() was using the handle"
    with pytest.raises(StoreNotOpenError):
        store.metrics_text()
    release.set()
    caller.join(10)
    closer.join(10)
    assert not closer.is_alive()
    assert [[p.name for p in r] for r in results] == [["pro"]]


def test_default_sentinel_keeps_absent_apart_from_none(store: Store) -> None:
    # rate_limit: DEFAULT (absent in the JSON) is the store default, None (null) is none.
    default = store.put_plan("a", rate_limit=DEFAULT, now_ms=T0)
    assert default.rate_limit == RateLimit(60, 60_000, 60)
    assert store.put_plan("b", rate_limit=None, now_ms=T0).rate_limit is None


def test_records_carry_the_state_the_library_computes(store: Store) -> None:
    """Issue 21, item 3: ``state`` is a KeyState in every record (get, list, create, update, rotate),
    with its reason and grace end; a rotated key past its grace reads revoked (rotated) at once."""
    now = now_ms()
    past = store.create_key(now_ms=now - 60_000)
    rotating = store.create_key(now_ms=now)
    successor = store.rotate(past.id, grace_ms=1000, now_ms=now - 10_000)
    assert successor.record.state is KeyState.ACTIVE
    store.rotate(rotating.id, grace_ms=DAY_MS, now_ms=now)
    for rec in [store.get(past.id), next(k for k in store.list() if k.id == past.id)]:
        assert rec.state == "revoked" and rec.state is KeyState.REVOKED
        assert (rec.state_reason, rec.revoked_at_ms) == ("rotated", None)
    rec = store.get(rotating.id)
    assert (rec.state, rec.grace_ends_at_ms) == (KeyState.ROTATING, now + DAY_MS)
    soon = store.create_key(expires_at_ms=now + DAY_MS, now_ms=now)
    assert soon.record.state is KeyState.EXPIRING
    assert store.update(soon.id, name="x").state is KeyState.EXPIRING
    store.revoke(soon.id, now_ms=now)
    assert (store.get(soon.id).state, store.get(soon.id).state_reason) == (KeyState.REVOKED, "manual")


def test_an_unknown_plan_is_refused_once_plans_are_defined(store: Store) -> None:
    """Issue 21, item 6: ``plan="prp"`` when the plan is ``pro`` is refused, naming the plans, unless
    ``new_plan=True``."""
    early = store.create_key(plan="beta")  # no plan defined yet: any label
    store.put_plan("pro", quota=(5, "daily"))
    refused(lambda: store.create_key(plan="prp"), '"prp"', "pro", "new_plan")
    refused(lambda: store.update(early.id, plan="prp"), "pro")
    created = store.create_key(plan="prp", new_plan=True)
    assert (created.record.plan, created.record.quota) == ("prp", None)
    assert store.update(early.id, plan="gold", new_plan=True).plan == "gold"
    assert store.update(early.id, plan="pro").quota == Quota(5, "daily")


def test_bidi_controls_are_refused(store: Store) -> None:
    """Issue 21, item 9: names, plans and actors holding a bidirectional override are refused."""
    refused(lambda: store.create_key(name="invoice\u202efdp.exe"), "name contains U+202E")
    refused(lambda: store.put_plan("pro\u2066"), "plan.name contains U+2066")
    refused(lambda: store.set_actor("ops:\u200fbob"), "actor contains U+200F")
    assert store.list() == []
