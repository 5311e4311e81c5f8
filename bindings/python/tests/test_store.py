"""The Store API against the real library: admin calls, every decision, figures and headers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import ms_auth
from ms_auth import DEFAULT, UNCHANGED, CheckResult, Quota, RateLimit, Status, Store
from conftest import (
    DAY_MS,
    DOCUMENTED,
    ceil_s,
    documented_body,
    documented_bytes,
    next_utc_midnight_ms,
    now_ms,
)

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z: a fixed clock for exact figures


def test_create_key_defaults(store: Store) -> None:
    created = store.create_key(now_ms=T0)
    assert created.key.startswith("ms_live_")
    assert created.key not in repr(created)  # the plaintext stays out of reprs
    rec = created.record
    assert not hasattr(rec, "key") and "key" not in rec.as_dict()
    assert rec.id == created.id
    assert created.key.startswith(rec.prefix)
    assert rec.env == "live"
    assert rec.name is None and rec.plan is None
    assert rec.created_at_ms == T0
    assert rec.expires_at_ms == T0 + 365 * DAY_MS
    assert rec.quota is None
    assert rec.rate_limit == RateLimit(60, 60_000, 60)
    assert rec.revoked_at_ms is None
    assert rec.usage.used == 0


def test_create_key_every_option(store: Store) -> None:
    created = store.create_key(
        env="test",
        name="billing",
        plan="pro",
        expires_at_ms=T0 + 1000,
        quota=(500, "monthly"),
        rate_limit=(10, 1000, 20),
        meta={"team": "payments", "n": [1, 2]},
        now_ms=T0,
    )
    rec = created.record
    assert created.key.startswith("ms_test_")
    assert (rec.env, rec.name, rec.plan) == ("test", "billing", "pro")
    assert rec.expires_at_ms == T0 + 1000
    assert rec.quota == Quota(500, "monthly")
    assert rec.rate_limit == RateLimit(10, 1000, 20)
    assert rec.meta == {"team": "payments", "n": [1, 2]}
    assert store.get(created.id) == rec


def test_none_means_never_and_unlimited(store: Store) -> None:
    created = store.create_key(expires_at_ms=None, rate_limit=None, now_ms=T0)
    assert created.record.expires_at_ms is None
    assert created.record.rate_limit is None
    # Far in the future, thousands of checks in one millisecond: still admitted.
    for _ in range(2000):
        assert store.check(created.key, now_ms=T0 + 100 * 365 * DAY_MS).ok


def test_default_sentinel_reprs() -> None:
    assert repr(DEFAULT) == "ms_auth.DEFAULT"
    assert repr(UNCHANGED) == "ms_auth.UNCHANGED"


def test_rate_limit_without_burst_defaults_to_limit(store: Store) -> None:
    rec = store.create_key(rate_limit=(5, 1000)).record
    assert rec.rate_limit == RateLimit(5, 1000, 5)


def test_import_existing_key(store: Store) -> None:
    plaintext = "legacy-key-0123456789"
    created = store.create_key(key=plaintext, plan="legacy")
    assert created.key == plaintext
    result = store.check(plaintext)
    assert result.ok and result.key_id == created.id and result.plan == "legacy"


def test_get_list_update_revoke(store: Store) -> None:
    a = store.create_key(plan="pro", name="a", now_ms=T0)
    b = store.create_key(plan="free", name="b", env="test", now_ms=T0)
    ids = {r.id for r in store.list()}
    assert ids == {a.id, b.id}
    assert [r.id for r in store.list(plan="pro")] == [a.id]
    assert [r.id for r in store.list(env="test")] == [b.id]
    assert store.list(plan="none-such") == []

    rec = store.update(a.id, name="renamed", quota=(3, "daily"), meta={"x": 1})
    assert rec.name == "renamed" and rec.plan == "pro"  # plan left UNCHANGED
    assert rec.quota == Quota(3, "daily")
    assert rec.meta == {"x": 1}
    rec = store.update(a.id, quota=None, rate_limit=None, expires_at_ms=None, plan=None)
    assert rec.quota is None and rec.rate_limit is None
    assert rec.expires_at_ms is None and rec.plan is None
    assert rec.name == "renamed"
    assert store.get(a.id) == rec

    store.revoke(b.id, now_ms=T0 + 5)
    rec = store.get(b.id)
    assert rec.revoked_at_ms == T0 + 5
    assert store.check(b.key, now_ms=T0 + 10).status is Status.API_KEY_REVOKED


def test_check_ok_figures(store: Store) -> None:
    created = store.create_key(plan="pro", quota=(10, "daily"), rate_limit=(5, 1000), now_ms=T0)
    r = store.check(created.key, now_ms=T0 + 1)
    assert isinstance(r, CheckResult)
    assert r.ok and r.status is Status.OK and r.code == "ok"
    assert r.http_status == 200 and r.retry_after_ms == 0 and r.retry_after_s is None
    assert (r.quota_limit, r.quota_remaining, r.quota_reset_ms) == (10, 9, T0 + DAY_MS)
    assert (r.rate_limit, r.rate_remaining) == (5, 4)
    assert r.rate_reset_ms == T0 + 1 + 200  # one request uses one 1000/5 ms slot of the bucket
    assert r.key_id == created.id and r.plan == "pro"
    assert r.now_ms == T0 + 1
    assert r.as_dict()["status"] == "ok"
    assert "OK" in repr(r)
    with pytest.raises(ValueError):
        r.error_body()
    assert r.headers() == {
        "RateLimit-Policy": '"quota";q=10;w=86400, "rate";q=5;w=1',
        "RateLimit": f'"quota";r=9;t={DAY_MS // 1000}, "rate";r=4;t=1',
    }


def test_check_without_limits_has_no_rate_headers(store: Store) -> None:
    created = store.create_key(rate_limit=None)
    r = store.check(created.key)
    assert r.ok and r.plan is None
    assert (r.quota_limit, r.quota_remaining, r.quota_reset_ms, r.rate_limit) == (-1, -1, 0, -1)
    assert r.headers() == {}


@pytest.mark.parametrize("key", [None, "", b"", "   ", " \t "])
def test_missing(store: Store, key: object) -> None:
    r = store.check(key)  # type: ignore[arg-type]
    assert r.status is Status.API_KEY_MISSING
    assert r.http_status == 401 and not r.ok
    assert r.key_id is None and r.plan is None
    assert r.error_body() == documented_body("api_key_missing")
    assert r.error_body_bytes() == documented_bytes("api_key_missing")
    assert r.headers() == {}


def test_invalid_shapes(store: Store) -> None:
    created = store.create_key()
    for bad in [
        "ms_live_nope",
        created.key + "x",
        created.key[:-1],
        "a" * 513,
        "ms live key",
        "ms_live_\u00e9t\u00e9",
        "ms_live_\ud800",  # a lone surrogate: rejected, not an encoding crash
    ]:
        r = store.check(bad)
        assert r.status is Status.API_KEY_INVALID, bad
        assert r.error_body() == documented_body("api_key_invalid")
        assert r.key_id is None


def test_embedded_nul_is_seen_by_the_library(store: Store) -> None:
    created = store.create_key()
    key = created.key.encode()
    # Without the explicit length a C string would end at the NUL and this would match.
    assert store.check(key + b"\0garbage").status is Status.API_KEY_INVALID
    assert store.check(key[:8] + b"\0" + key[8:]).status is Status.API_KEY_INVALID
    assert store.check(key).ok


def test_surrounding_http_whitespace_is_trimmed(store: Store) -> None:
    created = store.create_key()
    assert store.check(" \t" + created.key + "\t ").ok
    assert store.check(bytearray(created.key.encode())).ok
    with pytest.raises(TypeError):
        store.check(12345)  # type: ignore[arg-type]


def test_expired_at_the_exact_instant(store: Store) -> None:
    created = store.create_key(expires_at_ms=T0 + 1000, now_ms=T0)
    assert store.check(created.key, now_ms=T0 + 999).ok
    r = store.check(created.key, now_ms=T0 + 1000)
    assert r.status is Status.API_KEY_EXPIRED and r.http_status == 401
    assert r.key_id == created.id
    assert r.error_body() == documented_body("api_key_expired")
    assert r.headers() == {}


def test_revoked(store: Store) -> None:
    created = store.create_key(plan="pro")
    store.revoke(created.id)
    r = store.check(created.key)
    assert r.status is Status.API_KEY_REVOKED and r.http_status == 401
    assert r.error_body() == documented_body("api_key_revoked")
    assert r.headers() == {}


def test_revoked_wins_over_expired(store: Store) -> None:
    created = store.create_key(expires_at_ms=T0 + 10, now_ms=T0)
    store.revoke(created.id, now_ms=T0 + 1)
    assert store.check(created.key, now_ms=T0 + 20).status is Status.API_KEY_REVOKED


def test_quota_exceeded_and_reset_at_utc_midnight(store: Store) -> None:
    created = store.create_key(quota=(2, "daily"), rate_limit=None, now_ms=T0)
    t = T0 + DAY_MS - 5000  # five seconds before midnight UTC
    assert store.check(created.key, now_ms=t).quota_remaining == 1
    assert store.check(created.key, now_ms=t).quota_remaining == 0
    r = store.check(created.key, now_ms=t)
    assert r.status is Status.API_KEY_QUOTA_EXCEEDED and r.http_status == 429
    assert r.retry_after_ms == 5000 and r.retry_after_s == 5
    assert r.error_body() == documented_body("api_key_quota_exceeded")
    assert r.headers() == {
        "Retry-After": "5",
        "RateLimit-Policy": '"quota";q=2;w=86400',
        "RateLimit": '"quota";r=0;t=5',
    }
    assert store.check(created.key, now_ms=T0 + DAY_MS).ok  # a new day, a new quota


def test_rate_limited_retry_after_rounds_up(store: Store) -> None:
    created = store.create_key(rate_limit=(2, 3000), now_ms=T0)  # one slot per 1500 ms
    assert store.check(created.key, now_ms=T0).ok
    assert store.check(created.key, now_ms=T0).ok
    r = store.check(created.key, now_ms=T0 + 1)
    assert r.status is Status.RATE_LIMIT_EXCEEDED and r.http_status == 429
    assert r.retry_after_ms == 1499
    assert r.headers()["Retry-After"] == "2"  # 1.499 s rounded up
    # t is the time until the bucket is full again (as nginx and Go said before the core built it),
    # Retry-After the time until one request is admitted.
    assert r.headers()["RateLimit"] == '"rate";r=0;t=3'
    assert r.headers()["RateLimit-Policy"] == '"rate";q=2;w=3'
    assert r.error_body() == documented_body("rate_limit_exceeded")
    assert store.check(created.key, now_ms=T0 + 1500).ok


def test_rejections_consume_nothing(store: Store) -> None:
    created = store.create_key(quota=(1, "daily"), rate_limit=(1, 60_000), now_ms=T0)
    assert store.check(created.key, now_ms=T0).ok
    for _ in range(5):
        assert not store.check(created.key, now_ms=T0 + 1).ok
    rec = store.get(created.id)
    assert rec.usage.used == 1


def test_usage_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    with Store(path) as s:
        created = s.create_key(quota=(3, "daily"), rate_limit=None, now_ms=T0)
        assert s.check(created.key, now_ms=T0 + 1).ok
        assert s.check(created.key, now_ms=T0 + 2).ok
    with Store(str(path)) as s:
        r = s.check(created.key, now_ms=T0 + 3)
        assert r.ok and r.quota_remaining == 0
        assert s.check(created.key, now_ms=T0 + 4).status is Status.API_KEY_QUOTA_EXCEEDED


def test_status_enum_follows_the_abi() -> None:
    for status in Status:
        assert status.code == ms_auth.status_code_string(status)
        http, message = DOCUMENTED.get(status.code, (200, "OK."))
        assert status.http_status == http
        assert status.message == message
    assert [s.name for s in Status] == [
        "OK",
        "API_KEY_MISSING",
        "API_KEY_INVALID",
        "API_KEY_EXPIRED",
        "API_KEY_REVOKED",
        "API_KEY_QUOTA_EXCEEDED",
        "RATE_LIMIT_EXCEEDED",
    ]
    assert ms_auth.status_code_string(99) == "unknown"


def test_a_status_prints_as_its_code_string_and_still_compares_as_its_number() -> None:
    # print(result.status) is what a newcomer tries first: it shows the documented code string.
    assert str(Status.API_KEY_INVALID) == "api_key_invalid"
    assert f"{Status.OK}" == "ok" and "{}".format(Status.RATE_LIMIT_EXCEEDED) == "rate_limit_exceeded"
    assert [str(s) for s in Status] == [s.code for s in Status]
    # An IntEnum still: code that compares with, indexes by or formats the ABI number keeps working.
    abi_number: int = 2
    assert Status.API_KEY_INVALID == abi_number and int(Status.API_KEY_INVALID) == 2
    assert Status(2) is Status.API_KEY_INVALID and {2: "x"}[Status.API_KEY_INVALID] == "x"
    assert f"{Status.API_KEY_INVALID:d}" == "2" and "%d" % Status.API_KEY_INVALID == "2"
    assert repr(Status.OK) == "<Status.OK: 0>"


def test_error_bodies_are_the_seed_bodies() -> None:
    for status, body in ms_auth.ERROR_BODIES.items():
        assert body == documented_bytes(status.code)


def test_version_and_library_path() -> None:
    assert ms_auth.library_version.split(".")[0] == "1"
    assert re.search(r"libms_auth\.(so|dylib)$|ms_auth\.dll$", ms_auth.library_path)
    assert ms_auth.ABI_VERSION == 1


def test_now_ms_is_milliseconds() -> None:
    assert abs(ms_auth.now_ms() - now_ms()) < 5000


def test_http_figures_against_wall_clock(store: Store) -> None:
    created = store.create_key(quota=(1, "daily"), rate_limit=None)
    t0 = now_ms()
    assert store.check(created.key).ok
    r = store.check(created.key)
    t1 = now_ms()
    assert r.status is Status.API_KEY_QUOTA_EXCEEDED
    assert r.quota_reset_ms == next_utc_midnight_ms(t0)
    low, high = ceil_s(next_utc_midnight_ms(t0) - t1), ceil_s(next_utc_midnight_ms(t0) - t0)
    assert low <= int(r.headers()["Retry-After"]) <= high


def test_closed_store(tmp_path: Path) -> None:
    s = Store(tmp_path / "k.db")
    created = s.create_key()
    assert not s.closed and "open" in repr(s)
    s.close()
    s.close()  # idempotent
    assert s.closed and "closed" in repr(s)
    with pytest.raises(ms_auth.StoreNotOpenError) as info:
        s.check(created.key)
    assert info.value.code == 101 and info.value.code_name == "store_not_open"
    for call in (lambda: s.get(created.id), lambda: s.list(), lambda: s.revoke(created.id)):
        with pytest.raises(ms_auth.StoreNotOpenError):
            call()


def test_forgotten_store_is_closed_by_gc(tmp_path: Path) -> None:
    import gc

    s = Store(tmp_path / "k.db")
    finalizer = s._finalizer
    del s
    gc.collect()
    assert not finalizer.alive


def test_several_stores_side_by_side(tmp_path: Path) -> None:
    with Store(tmp_path / "a.db") as a, Store(tmp_path / "b.db") as b:
        ka = a.create_key()
        assert a.check(ka.key).ok
        assert b.check(ka.key).status is Status.API_KEY_INVALID


def test_revoke_records_the_reason_people_read(store: Store) -> None:
    leaked = store.create_key()
    store.revoke(leaked.id, reason="leaked in a public repository")
    assert store.get(leaked.id).revoked_reason == "leaked in a public repository"
    store.revoke(leaked.id, reason="another")
    assert store.get(leaked.id).revoked_reason == "leaked in a public repository", "the first reason stays"
    plain = store.create_key()
    for bad in ("", "evil\u202etxt"):
        with pytest.raises(ms_auth.InvalidArgumentError, match="reason"):
            store.revoke(plain.id, reason=bad)
    assert store.get(plain.id).revoked_at_ms is None, "a refused revocation changes nothing"
    store.revoke(plain.id)
    assert store.get(plain.id).revoked_reason == "manual"
