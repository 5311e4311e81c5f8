"""What the admin calls answer: key records, plans, policies, audit events and usage, as frozen
dataclasses; and the readers that build them from the library's JSON."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import warnings
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Optional, Tuple, Union

from ._args import _utc
from ._check import Status
from ._errors import InternalError, error_from_code


class KeyState(str, enum.Enum):
    """A key's state, as every record gives it (``record.state``), worked out by the library as a
    check at that instant would decide (docs/c-abi.md). A ``str``: ``KeyState.REVOKED == "revoked"``."""

    ACTIVE = "active"
    """Admitted (within its limits)."""
    EXPIRING = "expiring"
    """Admitted, and expires within 7 days."""
    ROTATING = "rotating"
    """Replaced by ``rotate``, admitted until ``record.grace_ends_at_ms``."""
    REVOKED = "revoked"
    """Refused as revoked; ``record.state_reason`` says why (manual, rotated, idle, abuse...)."""
    EXPIRED = "expired"
    """Refused as expired."""
    SUSPENDED = "suspended"
    """Reserved for keys of a suspended customer; no library version produces it yet."""


@dataclass(frozen=True)
class KeyUsage:
    """A record's counts: the current quota period's, and every admitted request's."""

    period_start_ms: int
    used: int
    """Admitted requests in the current quota period."""
    total: int
    """Admitted requests ever."""
    last_used_at_ms: Optional[int]

    @property
    def period_start(self) -> _dt.datetime:
        return _utc(self.period_start_ms)

    @property
    def last_used_at(self) -> Optional[_dt.datetime]:
        return _optional_utc(self.last_used_at_ms)


@dataclass(frozen=True)
class KeyRecord:
    """A key record as documented in the C ABI (never the plaintext key). The last three fields are
    computed when the record is read: its ``state``, why it is revoked (``state_reason``), and when a
    rotating key's grace ends (``grace_ends_at_ms``).

    ``record["id"]`` (records used to be typed dicts) still answers, with a DeprecationWarning: read
    ``record.id``; ``as_dict()`` gives the JSON record."""

    id: str
    prefix: str
    """The key's first characters, shown in place of the key."""
    env: str
    name: Optional[str]
    plan: Optional[str]
    created_at_ms: int
    expires_at_ms: Optional[int]
    """None: never expires."""
    revoked_at_ms: Optional[int]
    revoked_reason: Optional[str]
    quota: Optional[Quota]
    """None: no quota."""
    rate_limit: Optional[RateLimit]
    """None: no rate limit."""
    usage: KeyUsage
    meta: Dict[str, Any]
    revoke_at_ms: Optional[int]
    """When a rotated key's grace ends (it is revoked then)."""
    rotated_from: Optional[str]
    rotated_to: Optional[str]
    follows_plan: Tuple[str, ...]
    """The limits (``"quota"``, ``"rate_limit"``) the key takes from its plan."""
    state: Union[KeyState, str]
    """A KeyState; a state newer than this binding stays a plain ``str``."""
    state_reason: Optional[str]
    """Why a revoked key is: ``"manual"``, ``"rotated"``, ``"idle"``, ``"abuse"``..."""
    grace_ends_at_ms: Optional[int]
    """A rotating key's grace end."""

    @property
    def created_at(self) -> _dt.datetime:
        return _utc(self.created_at_ms)

    @property
    def expires_at(self) -> Optional[_dt.datetime]:
        return _optional_utc(self.expires_at_ms)

    @property
    def revoked_at(self) -> Optional[_dt.datetime]:
        return _optional_utc(self.revoked_at_ms)

    @property
    def grace_ends_at(self) -> Optional[_dt.datetime]:
        return _optional_utc(self.grace_ends_at_ms)

    def as_dict(self) -> Dict[str, Any]:
        """The record as the library's JSON has it (plain dicts and lists; ``state`` a KeyState,
        which is a ``str``), e.g. for logging or ``json.dumps``."""
        plain = dataclasses.asdict(self)
        plain["follows_plan"] = list(self.follows_plan)
        return plain

    # Records used to be typed dicts: code reading them that way keeps working for a while.

    def __getitem__(self, field: str) -> Any:
        _warn_dict_access(f'record["{field}"]', f"record.{field}")
        return self.as_dict()[field]

    def get(self, field: str, default: Any = None) -> Any:
        _warn_dict_access(f'record.get("{field}")', f"record.{field}")
        return self.as_dict().get(field, default)

    def __contains__(self, field: object) -> bool:
        _warn_dict_access("`in` on a record", "its attributes")
        return field in self.as_dict()


def _warn_dict_access(old: str, new: str) -> None:
    warnings.warn(
        f"{old} is deprecated: use {new} (key records are typed dataclasses now)",
        DeprecationWarning,
        stacklevel=3,
    )


def _optional_utc(ms: Optional[int]) -> Optional[_dt.datetime]:
    return None if ms is None else _utc(ms)


@dataclass(frozen=True)
class KeyPage:
    """One page of the key list (``Store.list_keys``): its records, in the order the keys were
    created, and ``next``, the cursor of the page after (pass it as ``after=``), None when no matching
    key follows. Iterating a page, ``len()`` and indexing go over its records."""

    keys: Tuple[KeyRecord, ...]
    next: Optional[str]

    def __iter__(self) -> Iterator[KeyRecord]:
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> KeyRecord:
        return self.keys[index]


class CreatedKey:
    """The answer of ``create_key``: the plaintext ``key`` is shown only this once."""

    __slots__ = ("id", "key", "record")

    def __init__(self, id: str, key: str, record: KeyRecord) -> None:
        self.id = id
        self.key = key
        self.record = record

    def __repr__(self) -> str:
        # The plaintext stays out of logs and tracebacks.
        return f"CreatedKey(id={self.id!r}, prefix={self.record.prefix!r})"


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


def _state_of(value: Any) -> Union[KeyState, str]:
    try:
        return KeyState(value)
    except ValueError:
        return str(value)


def _record(raw: Dict[str, Any]) -> KeyRecord:
    """A record from the library's JSON. The fields added after v1 and before ``state`` are read
    with a default; a record without one this binding needs is an InternalError naming it."""
    try:
        return _record_of(raw)
    except (KeyError, TypeError, ValueError) as e:
        detail = f"the library's key record lacks or mistypes {e}"
        raise InternalError(104, detail, "read record") from None


def _record_of(raw: Dict[str, Any]) -> KeyRecord:
    usage = raw["usage"]
    return KeyRecord(
        id=str(raw["id"]),
        prefix=str(raw["prefix"]),
        env=str(raw["env"]),
        name=raw.get("name"),
        plan=raw.get("plan"),
        created_at_ms=int(raw["created_at_ms"]),
        expires_at_ms=raw.get("expires_at_ms"),
        revoked_at_ms=raw.get("revoked_at_ms"),
        revoked_reason=raw.get("revoked_reason"),
        quota=_quota_of(raw.get("quota")),
        rate_limit=_rate_of(raw.get("rate_limit")),
        usage=KeyUsage(
            period_start_ms=int(usage["period_start_ms"]),
            used=int(usage["used"]),
            total=int(usage["total"]),
            last_used_at_ms=usage.get("last_used_at_ms"),
        ),
        meta=raw.get("meta") or {},
        revoke_at_ms=raw.get("revoke_at_ms"),
        rotated_from=raw.get("rotated_from"),
        rotated_to=raw.get("rotated_to"),
        follows_plan=tuple(raw.get("follows_plan") or ()),
        state=_state_of(raw["state"]),
        state_reason=raw.get("state_reason"),
        grace_ends_at_ms=raw.get("grace_ends_at_ms"),
    )


def _created(raw: Dict[str, Any], operation: str) -> CreatedKey:
    plaintext = raw.pop("key", None)
    if not isinstance(plaintext, str):
        raise error_from_code(104, f"{operation}: the answer carries no key")
    return CreatedKey(str(raw["id"]), plaintext, _record(raw))


def _page_of(raw: Dict[str, Any]) -> KeyPage:
    after = raw.get("next")
    if after is not None and not isinstance(after, str):
        raise InternalError(104, "the library's key list has a next cursor that is not a string", "list_keys")
    return KeyPage(tuple(_record(k) for k in raw["keys"]), after)
