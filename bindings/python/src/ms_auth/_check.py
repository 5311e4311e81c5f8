"""The hot path's answer: Status, CheckResult, and the documented bodies of every code."""

from __future__ import annotations

import ctypes
import enum
import json
import struct
from typing import Any, Dict, Optional, Tuple

from . import _ffi
from ._errors import ErrorCode

_lib = _ffi.lib


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
