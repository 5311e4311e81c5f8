"""The arguments every call shares: instants, durations, C strings, JSON, and the DEFAULT and
UNCHANGED markers."""

from __future__ import annotations

import datetime as _dt
import enum
import json
import time
from typing import Any, Optional, Union

from ._errors import InvalidArgumentError


TimeLike = Union[int, _dt.datetime]
"""An instant: Unix milliseconds, or a timezone-aware ``datetime``."""

DurationLike = Union[int, _dt.timedelta]
"""A duration: milliseconds, or a ``timedelta`` (whole milliseconds; finer parts are dropped)."""


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


def _optional_time(value: Optional[TimeLike], name: str, operation: str) -> Optional[int]:
    return None if value is None else _time_ms(value, name, operation)


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
