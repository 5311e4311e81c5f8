"""ASGI middleware: answers the documented errors, hands admitted requests to the app.

    from ms_auth import Store
    from ms_auth.asgi import ApiKeyMiddleware
    app = ApiKeyMiddleware(app, Store("keys.db"))

An admitted request reaches the app with ``scope["ms_auth"] = {"key_id": ..., "plan": ...,
"result": CheckResult}``; its response gets the ``RateLimit-Policy``/``RateLimit`` headers unless the
app set them itself. WebSocket handshakes are checked too (a rejected one gets the documented
response where the server supports the ``websocket.http.response`` extension, else a close with
code 1008, which servers answer with 403). Other scopes (``lifespan``) pass through untouched.

The check runs inline on the event loop: it is an in-process call of a few microseconds.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, List, MutableMapping, Tuple

from ._errors import MsAuthError
from ._http import Checker, failure, key_header_name, rejection, repeated_key

__all__ = ["ApiKeyMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

RawHeaders = List[Tuple[bytes, bytes]]


def _raw(headers: List[Tuple[str, str]]) -> RawHeaders:
    return [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]


class ApiKeyMiddleware:
    """Checks the API key header of every HTTP request and WebSocket handshake against ``store``.

    Header names are compared without case and with ``-`` and ``_`` alike (as nginx and WSGI
    servers name headers): ``x_api_key`` is the key header too. A request carrying it more than
    once, in any spellings, is refused as api_key_invalid without a check.
    ``fail_open=True`` lets requests through when the library fails (default: answer the
    library's status and body for the failure, 503 or 500).
    """

    def __init__(
        self, app: ASGIApp, store: Checker, header: str = "X-API-Key", *, fail_open: bool = False
    ) -> None:
        self.app = app
        self.store = store
        self.header = header
        self.fail_open = fail_open
        self._name = key_header_name(header).encode("latin-1")

    def _keys(self, scope: Scope) -> List[bytes]:
        name = self._name
        return [
            bytes(v)
            for n, v in scope.get("headers") or ()
            if bytes(n).lower().replace(b"_", b"-") == name
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return
        keys = self._keys(scope)
        if len(keys) > 1:
            await self._respond(scope, send, *repeated_key())
            return
        try:
            result = self.store.check(keys[0] if keys else None)
        except MsAuthError as exc:
            if self.fail_open:
                await self.app(scope, receive, send)
                return
            await self._respond(scope, send, *failure(exc))
            return
        if not result.ok:
            await self._respond(scope, send, *rejection(result))
            return
        scope = dict(scope)
        scope["ms_auth"] = {"key_id": result.key_id, "plan": result.plan, "result": result}
        extra = _raw(list(result.headers().items()))
        if kind != "http" or not extra:
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                present = {bytes(name).lower() for name, _ in headers}
                headers.extend(h for h in extra if h[0] not in present)
                message = dict(message)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)

    async def _respond(
        self, scope: Scope, send: Send, status: int, headers: List[Tuple[str, str]], body: bytes
    ) -> None:
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": status, "headers": _raw(headers)})
            await send({"type": "http.response.body", "body": body})
            return
        extensions = scope.get("extensions") or {}
        if "websocket.http.response" in extensions:
            await send(
                {"type": "websocket.http.response.start", "status": status, "headers": _raw(headers)}
            )
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send({"type": "websocket.close", "code": 1008})
