"""What the WSGI and ASGI middlewares share: the documented responses and their headers."""

from __future__ import annotations

import json
import logging
from typing import Any, Dict, List, Optional, Protocol, Tuple, Union

from ._core import ERROR_BODIES, CheckResult, Status
from ._errors import MsAuthError

logger = logging.getLogger("ms_auth")

REASONS: Dict[int, str] = {
    200: "OK",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}

FAILURE_MESSAGE = "API key verification is temporarily unavailable."

Headers = List[Tuple[str, str]]


class Checker(Protocol):
    """What a middleware needs of a store (ms_auth.Store, or a test double)."""

    def check(self, key: Union[str, bytes, None], now_ms: Optional[int] = None) -> CheckResult:
        ...


def status_line(code: int) -> str:
    return f"{code} {REASONS.get(code, 'Unknown')}"


def rejection(result: CheckResult) -> Tuple[int, Headers, bytes]:
    """The documented answer to a rejected request: status, headers, exact JSON body."""
    body = result.error_body_bytes()
    headers: Headers = [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
    ]
    headers.extend(result.headers().items())
    return result.http_status, headers, body


def repeated_key() -> Tuple[int, Headers, bytes]:
    """The answer to a request with more than one key header, given without a check (an app
    could read another copy than the one checked): api_key_invalid, as for a refused key."""
    body = ERROR_BODIES[Status.API_KEY_INVALID]
    headers: Headers = [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
    ]
    return Status.API_KEY_INVALID.http_status, headers, body


def failure(exc: MsAuthError) -> Tuple[int, Headers, bytes]:
    """Fail closed: a library failure is never an admission. The body keeps the documented
    shape; the detail (which may name files) goes to the log, not to the client."""
    logger.error("ms_auth: API key check failed, answering 503: %s", exc)
    doc: Dict[str, Any] = {
        "success": False,
        "error": {"code": exc.code_name, "message": FAILURE_MESSAGE, "httpStatus": 503},
    }
    body = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    headers: Headers = [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
    ]
    return 503, headers, body
