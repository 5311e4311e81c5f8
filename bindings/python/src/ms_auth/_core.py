"""Store, CheckResult and Status: the Python face of the C ABI v1."""

from __future__ import annotations

import ctypes
import datetime as _dt
import enum
import json
import os
import struct
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Literal, Optional, Tuple, TypedDict, TypeVar, Union, cast

from . import _ffi
from ._errors import ErrorCode, InvalidArgumentError, StoreNotOpenError, error_from_code

_lib = _ffi.lib



class KeyState(str, enum.Enum):
    """A key's state, as every record gives it (``record["state"]``), worked out by the library as a
    check at that instant would decide (docs/c-abi.md). A ``str``: ``KeyState.REVOKED == "revoked"``."""

    ACTIVE = "active"
    """Admitted (within its limits)."""
    EXPIRING = "expiring"
    """Admitted, and expires within 7 days."""
    ROTATING = "rotating"
    """Replaced by ``rotate``, admitted until ``record["grace_ends_at_ms"]``."""
    REVOKED = "revoked"
    """Refused as revoked; ``record["state_reason"]`` says why (manual, rotated, idle, abuse...)."""
    EXPIRED = "expired"
    """Refused as expired."""
    SUSPENDED = "suspended"
    """Reserved for keys of a suspended customer; no library version produces it yet."""


class KeyUsage(TypedDict):
    """A record's counts: the current quota period's, and every admitted request's."""

    period_start_ms: int
    used: int
    total: int
    last_used_at_ms: Optional[int]


class KeyRecord(TypedDict):
    """A key record as documented in the C ABI (never the plaintext key). The last three fields are
    computed when the record is read: its ``state``, why it is revoked (``state_reason``), and when a
    rotating key's grace ends (``grace_ends_at_ms``)."""

    id: str
    prefix: str
    env: str
    name: Optional[str]
    plan: Optional[str]
    created_at_ms: int
    expires_at_ms: Optional[int]
    revoked_at_ms: Optional[int]
    revoked_reason: Optional[str]
    quota: Optional[Dict[str, Any]]
    rate_limit: Optional[Dict[str, Any]]
    usage: KeyUsage
    meta: Dict[str, Any]
    revoke_at_ms: Optional[int]
    rotated_from: Optional[str]
    rotated_to: Optional[str]
    follows_plan: List[str]
    state: KeyState
    state_reason: Optional[str]
    grace_ends_at_ms: Optional[int]


TimeLike = Union[int, _dt.datetime]
"""An instant: Unix milliseconds, or a timezone-aware ``datetime``."""

DurationLike = Union[int, _dt.timedelta]
"""A duration: milliseconds, or a ``timedelta`` (whole milliseconds; finer parts are dropped)."""

QuotaSpec = Tuple[int, str]
"""``(limit, "daily" | "monthly")``."""

RateLimitSpec = Union[Tuple[int, DurationLike], Tuple[int, DurationLike, int]]
"""``(limit, window_ms)`` or ``(limit, window_ms, burst)``."""

AbuseSpec = Tuple[int, DurationLike]
"""``(limit, window_ms)``: revoke a key refused by its rate limit more than ``limit`` times
within ``window_ms``."""

Durability = Literal["batched", "strict"]
"""When admitted checks reach the database: within a flush interval, or each before its answer."""


class Status(enum.IntEnum):
    """Policy decisions of the C ABI; names follow the code strings (``api_key_missing``...).

    ``str()`` and ``f"{status}"`` give the code string; the value is the ABI number, so a status
    compares equal to it and ``f"{status:d}"`` formats it.
    """

    OK = 0
    API_KEY_MISSING = 1
    API_KEY_INVALID = 2
    API_KEY_EXPIRED = 3
    API_KEY_REVOKED = 4
    API_KEY_QUOTA_EXCEEDED = 5
    RATE_LIMIT_EXCEEDED = 6

    def __str__(self) -> str:
        return self.code

    def __format__(self, format_spec: str) -> str:
        # IntEnum formats as int, whatever __str__ says (and Pythons before 3.11 differ): say it here.
        return self.code if not format_spec else int.__format__(self, format_spec)

    @property
    def code(self) -> str:
        """The documented code string, e.g. ``"api_key_missing"``."""
        return self.name.lower()

    @property
    def http_status(self) -> int:
        return _HTTP[self]

    @property
    def message(self) -> str:
        """The documented message, e.g. ``"API key is missing."``."""
        return _MESSAGES[self]


_STATUSES = tuple(Status)
_HTTP: Dict[Status, int] = {s: int(_lib.ms_status_http(s)) for s in Status}
_MESSAGES: Dict[Status, str] = {s: _lib.ms_status_message(s).decode("utf-8") for s in Status}


def _error_json(status: int) -> bytes:
    # snprintf-style: ask for the length first, then fill a buffer one byte larger for the NUL.
    need = int(_lib.ms_error_json(status, None, 0))
    buf = ctypes.create_string_buffer(need + 1)
    _lib.ms_error_json(status, buf, need + 1)
    return buf.raw[:need]


# The documented bodies never change at run time: built once from ms_error_json, then reused.
ERROR_BODIES: Dict[Status, bytes] = {s: _error_json(s) for s in Status if s is not Status.OK}
_FAILURE_ANSWERS: Dict[int, Tuple[int, bytes]] = {
    int(c): (int(_lib.ms_status_http(c)), _error_json(c)) for c in ErrorCode
}


def failure_answer(code: int) -> Tuple[int, bytes]:
    """The HTTP status and JSON body the library gives a failure code (``ms_status_http``,
    ``ms_error_json``), e.g. 503 and ``{"success":false,"error":{"code":"store_unavailable",...}}``:
    what every host answers it. No detail (``ms_last_error``) is in it."""
    answer = _FAILURE_ANSWERS.get(code)
    if answer is None:
        answer = int(_lib.ms_status_http(code)), _error_json(code)
    return answer


class _Default(enum.Enum):
    DEFAULT = "DEFAULT"

    def __repr__(self) -> str:
        return "ms_auth.DEFAULT"


class _Unchanged(enum.Enum):
    UNCHANGED = "UNCHANGED"

    def __repr__(self) -> str:
        return "ms_auth.UNCHANGED"


DEFAULT = _Default.DEFAULT
"""``create_key`` argument value meaning "the store's default" (365 days, 60 requests/min)."""

UNCHANGED = _Unchanged.UNCHANGED
"""``update`` argument value meaning "leave this field as it is"."""


def _ceil_seconds(ms: int) -> int:
    return -(-ms // 1000) if ms > 0 else 0


_RESULT = struct.Struct("=iiqqqqqqq48s64s")
assert _RESULT.size == ctypes.sizeof(_ffi.CheckResultStruct)
_unpack_result = _RESULT.unpack_from
_RawResult = Tuple[int, int, int, int, int, int, int, int, int, bytes, bytes]


class CheckResult:
    """The decision for one request and the figures behind it (``ms_check_result``).

    Built from one copy of the C struct; fields are decoded when read, which keeps
    ``Store.check`` cheap on the hot path.
    """

    __slots__ = ("_raw", "now_ms", "_fields")

    def __init__(self, raw: _RawResult, now_ms: int, fields: bytes = b"") -> None:
        self._raw = raw
        self.now_ms = now_ms
        """The time (Unix ms) the decision was made for."""
        # The answer's fields as the library builds them for every host (ms_store_check_http).
        self._fields = fields

    @property
    def status(self) -> Status:
        code = self._raw[0]
        return _STATUSES[code]

    @property
    def ok(self) -> bool:
        """True when the request is admitted (and was counted)."""
        return self._raw[0] == 0

    @property
    def code(self) -> str:
        return self.status.code

    @property
    def http_status(self) -> int:
        return self._raw[1]

    @property
    def retry_after_ms(self) -> int:
        """Milliseconds until a retry can succeed; > 0 only for 429s."""
        return self._raw[2]

    @property
    def quota_limit(self) -> int:
        """Requests per quota period; -1 without a quota."""
        return self._raw[3]

    @property
    def quota_remaining(self) -> int:
        """Requests left in this period after this one; -1 without a quota."""
        return self._raw[4]

    @property
    def quota_reset_ms(self) -> int:
        """Unix ms at which the current quota period ends; 0 without a quota."""
        return self._raw[5]

    @property
    def rate_limit(self) -> int:
        """Requests per rate window; -1 without a rate limit."""
        return self._raw[6]

    @property
    def rate_remaining(self) -> int:
        """Requests that would be admitted right now, after this one."""
        return self._raw[7]

    @property
    def rate_reset_ms(self) -> int:
        """Unix ms at which the rate bucket is full again."""
        return self._raw[8]

    @property
    def key_id(self) -> Optional[str]:
        """Id of the matched key, None when no key matched."""
        raw = self._raw[9].partition(b"\0")[0]
        return raw.decode("ascii", "replace") if raw else None

    @property
    def plan(self) -> Optional[str]:
        """Plan label of the matched key, None when it has none."""
        raw = self._raw[10].partition(b"\0")[0]
        return raw.decode("utf-8", "replace") if raw else None

    @property
    def retry_after_s(self) -> Optional[int]:
        """``Retry-After`` in whole seconds, rounded up; None unless a 429 says when to retry."""
        ms = self._raw[2]
        return _ceil_seconds(ms) if ms > 0 else None

    def error_body_bytes(self) -> bytes:
        """The documented JSON body as bytes (from ``ms_error_json``); ValueError when admitted."""
        try:
            return ERROR_BODIES[self.status]
        except KeyError:
            raise ValueError("an admitted request (status OK) has no error body") from None

    def error_body(self) -> Dict[str, Any]:
        """The documented body, e.g. ``{"success": False, "error": {"code": "api_key_missing",
        "message": "API key is missing.", "httpStatus": 401}}``; ValueError when admitted."""
        body: Dict[str, Any] = json.loads(self.error_body_bytes())
        return body

    def headers(self) -> Dict[str, str]:
        """Response headers for this decision, as the library builds them for every host
        (``ms_store_check_http``), so that nginx, Go and Python answer alike.

        ``Retry-After`` (whole seconds, rounded up) on 429s, and for a matched key that is in force
        the IETF draft (httpapi-ratelimit-headers) fields: ``RateLimit-Policy`` with one item per
        policy (``"quota"``, ``"rate"``; ``q`` = limit, ``w`` = window in seconds) and ``RateLimit``
        with the remaining requests ``r`` and the seconds ``t`` until the item resets.
        """
        out: Dict[str, str] = {}
        for line in self._fields.decode("ascii").split("\r\n"):
            name, sep, value = line.partition(": ")
            if sep:
                out[name] = value
        return out

    def as_dict(self) -> Dict[str, Any]:
        """All figures as a plain dict (for logging or JSON)."""
        return {
            "status": self.status.code,
            "http_status": self.http_status,
            "retry_after_ms": self.retry_after_ms,
            "quota_limit": self.quota_limit,
            "quota_remaining": self.quota_remaining,
            "quota_reset_ms": self.quota_reset_ms,
            "rate_limit": self.rate_limit,
            "rate_remaining": self.rate_remaining,
            "rate_reset_ms": self.rate_reset_ms,
            "key_id": self.key_id,
            "plan": self.plan,
        }

    def __repr__(self) -> str:
        return (
            f"CheckResult(status={self.status.name}, http_status={self.http_status}, "
            f"key_id={self.key_id!r}, plan={self.plan!r}, retry_after_ms={self.retry_after_ms})"
        )


class CreatedKey:
    """The answer of ``create_key``: the plaintext ``key`` is shown only this once."""

    __slots__ = ("id", "key", "record")

    def __init__(self, id: str, key: str, record: KeyRecord) -> None:
        self.id = id
        self.key = key
        self.record = record

    def __repr__(self) -> str:
        # The plaintext stays out of logs and tracebacks.
        return f"CreatedKey(id={self.id!r}, prefix={self.record.get('prefix')!r})"


def now_ms() -> int:
    """The current Unix time in milliseconds, as the library expects it."""
    return time.time_ns() // 1_000_000


# -- times, durations and C strings ----------------------------------------------------------------

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
_ONE_MS = _dt.timedelta(milliseconds=1)


def _time_ms(value: TimeLike, name: str, operation: str) -> int:
    """Unix ms of an instant: an int is taken as ms already, a datetime must carry its zone."""
    if isinstance(value, _dt.datetime):
        if value.utcoffset() is None:
            # Python would read it as local time, and the library's times are UTC: refuse to guess.
            raise InvalidArgumentError(
                100, f"{name} is a naive datetime: give it a tzinfo (timezone.utc)", operation
            )
        return (value - _EPOCH) // _ONE_MS
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise TypeError(f"{name} must be an int (Unix ms) or a datetime, not {type(value).__name__}")


def _duration_ms(value: DurationLike, name: str) -> int:
    if isinstance(value, _dt.timedelta):
        return value // _ONE_MS
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise TypeError(f"{name} must be an int (ms) or a timedelta, not {type(value).__name__}")


def _when(value: Optional[TimeLike], operation: str) -> int:
    """The ``now_ms`` of an admin call: the wall clock unless one is given."""
    if value is None:
        return time.time_ns() // 1_000_000
    return _time_ms(value, "now_ms", operation)


def _utc(ms: int) -> _dt.datetime:
    return _EPOCH + _dt.timedelta(milliseconds=ms)


def _cstr(value: str, name: str, operation: str) -> bytes:
    """A C string argument. C would stop at a NUL and act on another key id (or actor) than the
    one given: refused."""
    raw = value.encode("utf-8")
    if b"\0" in raw:
        raise InvalidArgumentError(100, f"{name} contains a NUL character", operation)
    return raw


# -- typed answers of the lifecycle calls ----------------------------------------------------------


@dataclass(frozen=True)
class Quota:
    """A number of requests per UTC calendar period (``"daily"`` or ``"monthly"``)."""

    limit: int
    period: str


@dataclass(frozen=True)
class RateLimit:
    """A token bucket: ``burst`` requests at once, refilled at ``limit`` per ``window_ms``."""

    limit: int
    window_ms: int
    burst: int

    @property
    def window(self) -> _dt.timedelta:
        return _dt.timedelta(milliseconds=self.window_ms)


@dataclass(frozen=True)
class Plan:
    """A plan: the limits and lifetime of the keys on it that set none of their own."""

    name: str
    quota: Optional[Quota]
    """None: the plan's keys have no quota."""
    rate_limit: Optional[RateLimit]
    """None: the plan's keys have no rate limit."""
    lifetime_ms: Optional[int]
    """Lifetime of keys created on the plan without an expiry; None: the store default."""
    updated_at_ms: int
    keys: int
    """How many keys are on the plan."""

    @property
    def lifetime(self) -> Optional[_dt.timedelta]:
        return None if self.lifetime_ms is None else _dt.timedelta(milliseconds=self.lifetime_ms)

    @property
    def updated_at(self) -> _dt.datetime:
        return _utc(self.updated_at_ms)


@dataclass(frozen=True)
class AbusePolicy:
    """Revoke a key refused by its rate limit more than ``limit`` times within ``window_ms``."""

    limit: int
    window_ms: int

    @property
    def window(self) -> _dt.timedelta:
        return _dt.timedelta(milliseconds=self.window_ms)


@dataclass(frozen=True)
class Policies:
    """The store-wide revocation policies in force; None: that policy is off."""

    idle_days: Optional[int]
    """Revoke keys unused (or never used) for this many days."""
    abuse: Optional[AbusePolicy]
    rotated: str = "always"
    """Rotated keys are always revoked when their grace ends."""

    @property
    def idle(self) -> Optional[_dt.timedelta]:
        return None if self.idle_days is None else _dt.timedelta(days=self.idle_days)


@dataclass(frozen=True)
class AuditEvent:
    """One admin action: ``key.create``, ``key.update``, ``key.revoke``, ``key.revoke.policy``,
    ``key.rotate``, ``plan.put`` or ``policy.set``."""

    seq: int
    at_ms: int
    actor: str
    action: str
    key_id: Optional[str]
    """None for store-wide actions (plans, policies)."""
    detail: Any
    """The change, as the library recorded it (never a plaintext key)."""
    host: Optional[str] = None
    """In a fleet, the host where the change was made; None on a store in no fleet."""

    @property
    def at(self) -> _dt.datetime:
        return _utc(self.at_ms)


@dataclass(frozen=True)
class UsageDay:
    """One UTC day of a key's decisions."""

    date: _dt.date
    start_ms: int
    admitted: int
    rejected: Dict[Status, int]
    """Refusals by status: ``API_KEY_EXPIRED``, ``API_KEY_REVOKED``, ``API_KEY_QUOTA_EXCEEDED``,
    ``RATE_LIMIT_EXCEEDED``."""

    @property
    def start(self) -> _dt.datetime:
        return _utc(self.start_ms)


@dataclass(frozen=True)
class Usage:
    """A key's decisions per UTC day (every day of the range, in order) and its last use."""

    key_id: str
    last_used_at_ms: Optional[int]
    days: Tuple[UsageDay, ...]

    @property
    def last_used_at(self) -> Optional[_dt.datetime]:
        return None if self.last_used_at_ms is None else _utc(self.last_used_at_ms)


_STATUS_BY_CODE: Dict[str, Status] = {s.code: s for s in Status}


def _quota_of(value: Any) -> Optional[Quota]:
    return None if value is None else Quota(int(value["limit"]), str(value["period"]))


def _rate_of(value: Any) -> Optional[RateLimit]:
    if value is None:
        return None
    return RateLimit(int(value["limit"]), int(value["window_ms"]), int(value["burst"]))


def _plan_of(value: Dict[str, Any]) -> Plan:
    return Plan(
        name=str(value["name"]),
        quota=_quota_of(value.get("quota")),
        rate_limit=_rate_of(value.get("rate_limit")),
        lifetime_ms=value.get("lifetime_ms"),
        updated_at_ms=int(value["updated_at_ms"]),
        keys=int(value["keys"]),
    )


def _policies_of(value: Dict[str, Any]) -> Policies:
    idle = value.get("idle")
    abuse = value.get("abuse")
    return Policies(
        idle_days=None if idle is None else int(idle["days"]),
        abuse=None if abuse is None else AbusePolicy(int(abuse["limit"]), int(abuse["window_ms"])),
        rotated=str(value.get("rotated", "always")),
    )


def _event_of(value: Dict[str, Any]) -> AuditEvent:
    return AuditEvent(
        seq=int(value["seq"]),
        at_ms=int(value["at_ms"]),
        actor=str(value["actor"]),
        action=str(value["action"]),
        key_id=value.get("key_id"),
        detail=value.get("detail"),
        host=value.get("host"),
    )


def _usage_of(value: Dict[str, Any]) -> Usage:
    days = tuple(
        UsageDay(
            date=_dt.date.fromisoformat(d["date"]),
            start_ms=int(d["start_ms"]),
            admitted=int(d["admitted"]),
            # A status a newer library adds has no Status member here: left out, not an error.
            rejected={
                _STATUS_BY_CODE[code]: int(n)
                for code, n in d["rejected"].items()
                if code in _STATUS_BY_CODE
            },
        )
        for d in value["days"]
    )
    return Usage(str(value["key_id"]), value.get("last_used_at_ms"), days)


class _Scratch(threading.local):
    """One ms_check_result per thread: ctypes releases the GIL during the call, so threads
    cannot share one, and allocating one per call would cost more than the check."""

    def __init__(self) -> None:
        self.buf = _ffi.CheckResultStruct()
        self.addr = ctypes.addressof(self.buf)
        # MS_HTTP_FIELDS_MAX: every answer's fields fit, so a check never has to be repeated.
        self.fields = ctypes.create_string_buffer(_ffi.HTTP_FIELDS_MAX)
        self.needed = ctypes.c_size_t()
        self.needed_addr = ctypes.addressof(self.needed)


_scratch = _Scratch()
_store_check_http = _lib.ms_store_check_http
_time_ns = time.time_ns


def _quota_json(quota: Union[QuotaSpec, Quota, None]) -> Optional[Dict[str, Any]]:
    if quota is None:
        return None
    if isinstance(quota, Quota):
        return {"limit": quota.limit, "period": quota.period}
    if not isinstance(quota, tuple) or len(quota) != 2:
        raise TypeError('quota must be None or (limit, "daily" | "monthly")')
    return {"limit": quota[0], "period": quota[1]}


def _rate_json(rate: Union[RateLimitSpec, RateLimit, None]) -> Optional[Dict[str, Any]]:
    if rate is None:
        return None
    if isinstance(rate, RateLimit):
        return {"limit": rate.limit, "window_ms": rate.window_ms, "burst": rate.burst}
    if not isinstance(rate, tuple) or len(rate) not in (2, 3):
        raise TypeError("rate_limit must be None, (limit, window_ms) or (limit, window_ms, burst)")
    window = _duration_ms(rate[1], "rate_limit window")
    spec: Dict[str, Any] = {"limit": rate[0], "window_ms": window}
    if len(rate) == 3:
        spec["burst"] = rate[2]
    return spec


def _abuse_json(abuse: Union[AbuseSpec, AbusePolicy, None]) -> Optional[Dict[str, Any]]:
    if abuse is None:
        return None
    if isinstance(abuse, AbusePolicy):
        return {"limit": abuse.limit, "window_ms": abuse.window_ms}
    if not isinstance(abuse, tuple) or len(abuse) != 2:
        raise TypeError("abuse must be None, an AbusePolicy or (limit, window_ms)")
    return {"limit": abuse[0], "window_ms": _duration_ms(abuse[1], "abuse window")}


def _idle_json(
    idle_days: Union[int, _dt.timedelta, None], operation: str
) -> Optional[Dict[str, Any]]:
    if idle_days is None:
        return None
    if isinstance(idle_days, _dt.timedelta):
        days, rest = divmod(idle_days, _dt.timedelta(days=1))
        if rest:
            raise InvalidArgumentError(100, "idle_days must be a whole number of days", operation)
        return {"days": days}
    if isinstance(idle_days, int) and not isinstance(idle_days, bool):
        return {"days": idle_days}
    raise TypeError(f"idle_days must be an int or a timedelta, not {type(idle_days).__name__}")


def _optional_time(value: Optional[TimeLike], name: str, operation: str) -> Optional[int]:
    return None if value is None else _time_ms(value, name, operation)


def _record(raw: Dict[str, Any]) -> KeyRecord:
    """A record as the library wrote it, its ``state`` as a KeyState (a state newer than this binding
    stays a plain str)."""
    try:
        raw["state"] = KeyState(raw.get("state"))
    except ValueError:
        pass
    return cast(KeyRecord, raw)


def _created(raw: Dict[str, Any], operation: str) -> CreatedKey:
    plaintext = raw.pop("key", None)
    if not isinstance(plaintext, str):
        raise error_from_code(104, f"{operation}: the answer carries no key")
    return CreatedKey(str(raw["id"]), plaintext, _record(raw))


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class _Native:
    """The native handle and the guard that keeps it alive while calls use it.

    Every call puts an item in ``calls`` before it reads ``handle`` and takes it out when done;
    ``close`` (or the finalizer, at garbage collection or interpreter exit) first takes the handle
    away, so that no new call uses it, then waits for ``calls`` to empty before freeing it: no
    thread calls into a freed handle. Under the GIL ``list.append``/``pop`` are atomic and each
    thread sees the others' steps in order, so the check path needs no lock (a lock costs it three
    times as much). Kept apart from the Store so that the finalizer does not keep the Store alive.
    """

    __slots__ = ("handle", "calls", "lock", "idle", "__weakref__")

    def __init__(self, handle: int) -> None:
        self.handle: Optional[int] = handle
        self.calls: List[None] = []
        self.lock = threading.Lock()
        self.idle = threading.Condition(self.lock)
        _natives.add(self)

    def enter(self, operation: str) -> int:
        self.calls.append(None)
        handle = self.handle
        if handle is None:
            self.leave()
            raise StoreNotOpenError(101, "the Store was closed", operation)
        return handle

    def leave(self) -> None:
        self.calls.pop()
        if self.handle is None:
            self.wake()

    def wake(self) -> None:
        """Tells a waiting close() that a call has ended."""
        with self.lock:
            self.idle.notify_all()

    def close(self) -> None:
        # The lock is held to the end, so that a concurrent close() also returns only once the
        # handle is freed.
        with self.lock:
            handle = self.handle
            if handle is None:
                return
            self.handle = None
            while self.calls:
                self.idle.wait()
            _lib.ms_store_close(handle)


_natives: "weakref.WeakSet[_Native]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # Only the forking thread lives on in a child: calls that the parent's other threads had in
    # progress never end there, and must not hold close() (or the exit) up for ever.
    for native in list(_natives):
        native.calls.clear()
        native.lock = threading.Lock()
        native.idle = threading.Condition(native.lock)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


_S = TypeVar("_S", bound="Store")


class Store:
    """An open ms-auth store (one SQLite file). Safe to share between threads.

    Use it as a context manager or call ``close()``; a forgotten store is closed when it is
    garbage-collected, and a live one at interpreter exit. Closing waits for the calls other
    threads have in progress; their later calls raise StoreNotOpenError.
    """

    def __init__(
        self,
        path: Union[str, "os.PathLike[str]"],
        *,
        flush_interval_ms: Optional[DurationLike] = None,
        durability: Optional[Durability] = None,
        busy_timeout_ms: Optional[DurationLike] = None,
        create: Optional[bool] = None,
    ) -> None:
        """Open (or create) the store at ``path``. Options left as None keep the library's
        defaults: counts written to the database at most every second (``flush_interval_ms``),
        ``durability="batched"`` (``"strict"`` also writes every admitted check before answering),
        admin writes waiting up to 5 s for another process's lock (``busy_timeout_ms``), and a new
        store where ``path`` has none (``create=False`` raises StoreUnavailableError instead, naming
        the path, and writes nothing: for tools that only read)."""
        self.path = os.fspath(path)
        options: Dict[str, Any] = {}
        if flush_interval_ms is not None:
            options["flush_interval_ms"] = _duration_ms(flush_interval_ms, "flush_interval_ms")
        if durability is not None:
            options["durability"] = durability
        if busy_timeout_ms is not None:
            options["busy_timeout_ms"] = _duration_ms(busy_timeout_ms, "busy_timeout_ms")
        if create is not None:
            options["create"] = create
        handle = ctypes.c_void_p()
        if options:
            rc = _lib.ms_store_open_v2(
                os.fsencode(self.path), _dumps(options), ctypes.byref(handle)
            )
        else:
            rc = _lib.ms_store_open(os.fsencode(self.path), ctypes.byref(handle))
        if rc != 0:
            raise error_from_code(rc, f"open {self.path}")
        if not handle.value:
            raise error_from_code(104, f"open {self.path}: the library returned no handle")
        self._native = _Native(handle.value)
        self._finalizer = weakref.finalize(self, self._native.close)

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close the store, once the calls other threads have in progress return; further calls
        raise StoreNotOpenError. Idempotent. Not from a signal handler: the thread it interrupts
        may be inside a call, which would then never return."""
        self._native.close()
        self._finalizer.detach()

    @property
    def closed(self) -> bool:
        return self._native.handle is None

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"Store({self.path!r}, {state})"

    def _call(self, operation: str, fn: Callable[..., int], *args: Any) -> int:
        """``fn(handle, *args)`` with the handle held open until it returns."""
        native = self._native
        handle = native.enter(operation)
        try:
            return fn(handle, *args)
        finally:
            native.leave()

    # -- the hot path ------------------------------------------------------------------------

    def check(
        self, key: Union[str, bytes, None], now_ms: Optional[TimeLike] = None
    ) -> CheckResult:
        """Decide one request carrying ``key`` (None: no key header) at ``now_ms`` (default: now).

        An admitted request (``.ok``) is counted against the key's quota and rate limit.
        Library failures raise MsAuthError subclasses: fail closed on them.
        """
        if now_ms is None:
            now_ms = _time_ns() // 1_000_000
        elif not isinstance(now_ms, int):
            now_ms = _time_ms(now_ms, "now_ms", "check")
        if key is None:
            length = 0
        else:
            if key.__class__ is not bytes:
                # surrogatepass never fails, and turns odd characters into non-ASCII bytes that
                # the library rejects as invalid, rather than into a different printable key.
                if isinstance(key, str):
                    key = key.encode("utf-8", "surrogatepass")
                else:
                    key = bytes(memoryview(key))  # bytearray, memoryview; TypeError for others
            length = len(key)
        scratch = _scratch
        # _Native.enter and leave, inlined: this is the hot path.
        native = self._native
        calls = native.calls
        calls.append(None)
        try:
            handle = native.handle
            if handle is None:
                raise StoreNotOpenError(101, "the Store was closed", "check")
            # The length goes with the pointer so that an embedded NUL is seen (and rejected).
            rc: int = _store_check_http(
                handle,
                key,
                length,
                now_ms,
                scratch.addr,
                scratch.fields,
                _ffi.HTTP_FIELDS_MAX,
                scratch.needed_addr,
            )
        finally:
            calls.pop()
            if native.handle is None:
                native.wake()
        if rc > 6 or rc < 0:
            # 100+: a library failure. Anything else unknown is not a decision this package
            # understands: it fails closed the same way.
            raise error_from_code(rc, "check")
        n = scratch.needed.value
        # .value stops at the NUL the library wrote after the n bytes: no copy of the whole buffer.
        return CheckResult(_unpack_result(scratch.buf), now_ms, scratch.fields.value if n else b"")

    # -- administration ----------------------------------------------------------------------

    def _string_call(self, fn: Callable[..., int], operation: str, *args: Any) -> bytes:
        """``fn(handle, *args, &out)``; the library's string, copied and freed."""
        out = ctypes.c_void_p()
        rc = self._call(operation, fn, *args, ctypes.byref(out))
        if rc != 0:
            raise error_from_code(rc, operation)
        if not out.value:
            raise error_from_code(104, f"{operation}: the library returned no answer")
        try:
            return ctypes.string_at(out.value)
        finally:
            _lib.ms_string_free(out)

    def _json_call(self, fn: Callable[..., int], operation: str, *args: Any) -> Any:
        return json.loads(self._string_call(fn, operation, *args))

    def create_key(
        self,
        *,
        env: str = "live",
        name: Optional[str] = None,
        plan: Optional[str] = None,
        new_plan: bool = False,
        expires_at_ms: Union[TimeLike, None, _Default] = DEFAULT,
        quota: Optional[QuotaSpec] = None,
        rate_limit: Union[RateLimitSpec, None, _Default] = DEFAULT,
        meta: Any = None,
        key: Optional[str] = None,
        now_ms: Optional[TimeLike] = None,
    ) -> CreatedKey:
        """Issue a key (or import ``key``). ``expires_at_ms=None``: never expires;
        ``rate_limit=None``: no rate limit; DEFAULT leaves them to the store (365 d, 60/min).
        Once plans are defined, ``plan`` must name one (InvalidArgumentError lists them) unless
        ``new_plan=True`` says a label that names no plan is meant."""
        spec: Dict[str, Any] = {"env": env}
        if name is not None:
            spec["name"] = name
        if plan is not None:
            spec["plan"] = plan
        if new_plan:
            spec["new_plan"] = True
        if expires_at_ms is not DEFAULT:
            spec["expires_at_ms"] = _optional_time(expires_at_ms, "expires_at_ms", "create_key")
        if quota is not None:
            spec["quota"] = _quota_json(quota)
        if rate_limit is not DEFAULT:
            spec["rate_limit"] = _rate_json(rate_limit)
        if meta is not None:
            spec["meta"] = meta
        if key is not None:
            spec["key"] = key
        when = _when(now_ms, "create_key")
        answer: Dict[str, Any] = self._json_call(_lib.ms_key_create, "create_key", _dumps(spec), when)
        return _created(answer, "create_key")

    def get(self, key_id: str) -> KeyRecord:
        """The record of ``key_id``; KeyNotFoundError if there is none."""
        op = f"get {key_id}"
        return _record(self._json_call(_lib.ms_key_get, op, _cstr(key_id, "key_id", op)))

    def list(self, *, plan: Optional[str] = None, env: Optional[str] = None) -> List[KeyRecord]:
        """All key records, or those of one ``plan`` and/or ``env``."""
        flt: Dict[str, str] = {}
        if plan is not None:
            flt["plan"] = plan
        if env is not None:
            flt["env"] = env
        answer = self._json_call(_lib.ms_key_list, "list", _dumps(flt) if flt else None)
        return [_record(k) for k in answer["keys"]]

    def update(
        self,
        key_id: str,
        *,
        name: Union[str, None, _Unchanged] = UNCHANGED,
        plan: Union[str, None, _Unchanged] = UNCHANGED,
        new_plan: bool = False,
        expires_at_ms: Union[TimeLike, None, _Unchanged] = UNCHANGED,
        quota: Union[QuotaSpec, None, _Unchanged] = UNCHANGED,
        rate_limit: Union[RateLimitSpec, None, _Unchanged] = UNCHANGED,
        meta: Any = UNCHANGED,
    ) -> KeyRecord:
        """Change the given fields of a key; None clears one (no expiry, no quota, no rate
        limit, no name/plan/meta). ``new_plan`` as in ``create_key``. Returns the updated record."""
        patch: Dict[str, Any] = {}
        if name is not UNCHANGED:
            patch["name"] = name
        if plan is not UNCHANGED:
            patch["plan"] = plan
        if new_plan:
            patch["new_plan"] = True
        op = f"update {key_id}"
        if expires_at_ms is not UNCHANGED:
            patch["expires_at_ms"] = _optional_time(expires_at_ms, "expires_at_ms", op)
        if quota is not UNCHANGED:
            patch["quota"] = _quota_json(quota)
        if rate_limit is not UNCHANGED:
            patch["rate_limit"] = _rate_json(rate_limit)
        if meta is not UNCHANGED:
            patch["meta"] = meta
        return _record(
            self._json_call(_lib.ms_key_update, op, _cstr(key_id, "key_id", op), _dumps(patch))
        )

    def revoke(self, key_id: str, now_ms: Optional[TimeLike] = None) -> None:
        """Revoke a key for good: its next check answers api_key_revoked."""
        op = f"revoke {key_id}"
        when = _when(now_ms, op)
        rc = self._call(op, _lib.ms_key_revoke, _cstr(key_id, "key_id", op), when)
        if rc != 0:
            raise error_from_code(rc, op)

    # -- key lifecycle and monitoring ----------------------------------------------------------

    def set_actor(self, actor: str) -> None:
        """Name the actor the audit log records for this store's admin calls (default: the
        program, its pid and uid), e.g. ``"portal:alice@example.com"``; at most 200 bytes, without
        control characters, bidirectional controls (U+202E...) or invisible characters."""
        rc = self._call("set_actor", _lib.ms_store_set_actor, _cstr(actor, "actor", "set_actor"))
        if rc != 0:
            raise error_from_code(rc, "set_actor")

    def rotate(
        self,
        key_id: str,
        *,
        grace_ms: Optional[DurationLike] = None,
        now_ms: Optional[TimeLike] = None,
    ) -> CreatedKey:
        """Replace a key with a new one of the same policy, plan and meta that counts against the
        same quota. The old key works for ``grace_ms`` more (None: the library's 24 hours; 0: ends
        at once), then answers api_key_revoked. The new plaintext key is shown only here."""
        op = f"rotate {key_id}"
        opts = None
        if grace_ms is not None:
            opts = _dumps({"grace_ms": _duration_ms(grace_ms, "grace_ms")})
        answer: Dict[str, Any] = self._json_call(
            _lib.ms_key_rotate, op, _cstr(key_id, "key_id", op), opts, _when(now_ms, op)
        )
        return _created(answer, op)

    def put_plan(
        self,
        name: str,
        *,
        quota: Union[QuotaSpec, Quota, None] = None,
        rate_limit: Union[RateLimitSpec, RateLimit, None, _Default] = DEFAULT,
        lifetime_ms: Optional[DurationLike] = None,
        now_ms: Optional[TimeLike] = None,
    ) -> Plan:
        """Create or replace a plan. Keys on it that set no quota (or rate limit) of their own
        follow it from their next check, in every process. ``quota=None``: no quota;
        ``rate_limit=None``: no rate limit, DEFAULT: the store's (60 per minute);
        ``lifetime_ms``: the expiry of keys created on the plan without one."""
        op = f"put_plan {name}"
        spec: Dict[str, Any] = {"name": name}
        if quota is not None:
            spec["quota"] = _quota_json(quota)
        if rate_limit is not DEFAULT:
            spec["rate_limit"] = _rate_json(rate_limit)
        if lifetime_ms is not None:
            spec["lifetime_ms"] = _duration_ms(lifetime_ms, "lifetime_ms")
        answer = self._json_call(_lib.ms_plan_put, op, _dumps(spec), _when(now_ms, op))
        return _plan_of(answer)

    def plans(self) -> List[Plan]:
        """Every plan, by name."""
        answer = self._json_call(_lib.ms_plan_list, "plans")
        return [_plan_of(p) for p in answer["plans"]]

    def set_policy(
        self,
        *,
        idle_days: Union[int, _dt.timedelta, None, _Unchanged] = UNCHANGED,
        abuse: Union[AbuseSpec, AbusePolicy, None, _Unchanged] = UNCHANGED,
        now_ms: Optional[TimeLike] = None,
    ) -> Policies:
        """Change the store-wide revocation policies; every process enforces them from its next
        check. None turns a policy off, a policy left out stays as it is. ``idle_days``: revoke
        keys unused for that many days; ``abuse=(limit, window_ms)``: revoke a key refused by its
        rate limit more than ``limit`` times within ``window_ms``. Returns the policies now in
        force."""
        change: Dict[str, Any] = {}
        if idle_days is not UNCHANGED:
            change["idle"] = _idle_json(idle_days, "set_policy")
        if abuse is not UNCHANGED:
            change["abuse"] = _abuse_json(abuse)
        answer = self._json_call(
            _lib.ms_policy_put, "set_policy", _dumps(change), _when(now_ms, "set_policy")
        )
        return _policies_of(answer)

    def policy(self) -> Policies:
        """The revocation policies in force."""
        return _policies_of(self._json_call(_lib.ms_policy_get, "policy"))

    def audit(
        self,
        *,
        key_id: Optional[str] = None,
        since_ms: Optional[TimeLike] = None,
        limit: Optional[int] = None,
    ) -> List[AuditEvent]:
        """The audit log, oldest first: of one key, from an instant on, the last ``limit`` events
        (the library's default: the last 1000)."""
        flt: Dict[str, Any] = {}
        if key_id is not None:
            flt["key_id"] = key_id
        if since_ms is not None:
            flt["since_ms"] = _time_ms(since_ms, "since_ms", "audit")
        if limit is not None:
            flt["limit"] = limit
        answer = self._json_call(_lib.ms_audit, "audit", _dumps(flt) if flt else None)
        return [_event_of(e) for e in answer["events"]]

    def usage(self, key_id: str, from_ms: TimeLike, to_ms: TimeLike) -> Usage:
        """A key's admitted requests and refusals per UTC day, every day from ``from_ms`` to
        ``to_ms`` included, counted by every process; and its last use."""
        op = f"usage {key_id}"
        answer = self._json_call(
            _lib.ms_usage,
            op,
            _cstr(key_id, "key_id", op),
            _time_ms(from_ms, "from_ms", op),
            _time_ms(to_ms, "to_ms", op),
        )
        return _usage_of(answer)

    def metrics_text(self) -> str:
        """Prometheus text exposition (version 0.0.4), for the host's own ``/metrics``."""
        return self._string_call(_lib.ms_metrics_text, "metrics_text").decode("utf-8")
