"""What the WSGI and ASGI middlewares share: the documented responses and their headers."""

from __future__ import annotations

import logging
from typing import Dict, List, Optional, Protocol, Tuple, Union

from ._check import ERROR_BODIES, CheckResult, Status, failure_answer
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
    """Fail closed: a library failure is never an admission. The answer is the library's status
    and body for the failure (``ms_status_http``, ``ms_error_json``), as nginx and Go answer it;
    the detail (which may name files) goes to the log, not to the client."""
    status, body = failure_answer(exc.code)
    logger.error("ms_auth: API key check failed, answering %d: %s", status, exc)
    headers: Headers = [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
    ]
    return status, headers, body


def key_header_name(header: str) -> str:
    """``header`` as compared with a request's header names: without case and with ``-`` and ``_``
    alike, the way nginx (``$http_*``, FastCGI/uwsgi/SCGI params) and WSGI's environ
    (``HTTP_X_API_KEY``) name headers, so that ``X_API_KEY`` is the key header too."""
    return header.lower().replace("_", "-")
