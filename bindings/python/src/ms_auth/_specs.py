"""The shapes the admin calls take (quota, rate limit, abuse, idle), and their JSON for the library."""

from __future__ import annotations

import datetime as _dt
from typing import Any, Dict, Literal, Optional, Tuple, Union

from ._args import DurationLike, _duration_ms
from ._errors import InvalidArgumentError
from ._records import AbusePolicy, Quota, RateLimit


QuotaSpec = Tuple[int, str]
"""``(limit, "daily" | "monthly")``."""

RateLimitSpec = Union[Tuple[int, DurationLike], Tuple[int, DurationLike, int]]
"""``(limit, window_ms)`` or ``(limit, window_ms, burst)``."""

AbuseSpec = Tuple[int, DurationLike]
"""``(limit, window_ms)``: revoke a key refused by its rate limit more than ``limit`` times
within ``window_ms``."""

Durability = Literal["batched", "strict"]
"""When admitted checks reach the database: within a flush interval, or each before its answer."""


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
