"""WSGI middleware: answers the documented errors, hands admitted requests to the app.

    from ms_auth import Store
    from ms_auth.wsgi import ApiKeyMiddleware
    app = ApiKeyMiddleware(app, Store("keys.db"))

An admitted request reaches the app with ``environ["ms_auth.key_id"]``, ``environ["ms_auth.plan"]``
(None without a plan) and ``environ["ms_auth.result"]`` (the CheckResult); its response gets the
``RateLimit-Policy``/``RateLimit`` headers unless the app set them itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, List, Optional, Tuple

from ._errors import MsAuthError
from ._http import Checker, failure, key_header_name, rejection, status_line

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["ApiKeyMiddleware"]


def _key_bytes(value: Optional[str]) -> Optional[bytes]:
    if value is None:
        return None
    try:
        # PEP 3333 servers decode header bytes as latin-1: this gives the client's bytes back.
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogatepass")


class ApiKeyMiddleware:
    """Checks the API key header of every request against ``store``.

    The key is the environ's ``HTTP_X_API_KEY``, where the server puts ``X-API-Key`` and
    ``X_API_KEY`` alike (names compared without case and with ``-`` and ``_`` alike, as nginx and
    the ASGI and Go middlewares do). Servers merge repeated headers into that one value (wsgiref
    and gunicorn join them with ","), and no generated key holds a comma: such a request is
    answered api_key_invalid, and the app reads the value that was checked. (gunicorn drops
    header names with "_" unless told otherwise.)
    ``fail_open=True`` lets requests through when the library fails (default: answer the
    library's status and body for the failure, 503 or 500).
    """

    def __init__(
        self,
        app: "WSGIApplication",
        store: Checker,
        header: str = "X-API-Key",
        *,
        fail_open: bool = False,
    ) -> None:
        self.app = app
        self.store = store
        self.header = header
        self.fail_open = fail_open
        self._environ_key = "HTTP_" + key_header_name(header).upper().replace("-", "_")

    def __call__(
        self, environ: "WSGIEnvironment", start_response: "StartResponse"
    ) -> Iterable[bytes]:
        key = _key_bytes(environ.get(self._environ_key))
        try:
            result = self.store.check(key)
        except MsAuthError as exc:
            if self.fail_open:
                return self.app(environ, start_response)
            code, headers, body = failure(exc)
            start_response(status_line(code), headers)
            return [body]
        if not result.ok:
            code, headers, body = rejection(result)
            start_response(status_line(code), headers)
            return [body]
        environ["ms_auth.key_id"] = result.key_id
        environ["ms_auth.plan"] = result.plan
        environ["ms_auth.result"] = result
        extra = list(result.headers().items())
        if not extra:
            return self.app(environ, start_response)

        def add_headers(
            status: str, headers: List[Tuple[str, str]], exc_info: "OptExcInfo | None" = None
        ) -> Any:
            present = {name.lower() for name, _ in headers}
            merged = list(headers) + [h for h in extra if h[0].lower() not in present]
            return start_response(status, merged, exc_info)

        return self.app(environ, add_headers)
