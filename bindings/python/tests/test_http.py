"""Real servers on loopback (wsgiref for WSGI, uvicorn for ASGI) hit by real HTTP clients
(urllib, httpx): every documented answer, its status, exact body, Content-Type and headers."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.client import HTTPConnection
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    Iterator,
    List,
    MutableMapping,
    NamedTuple,
    Optional,
    Tuple,
    Union,
)
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import httpx
import pytest
import uvicorn

import ms_auth.asgi
import ms_auth.wsgi
from ms_auth import (
    CheckResult,
    InternalError,
    InvalidArgumentError,
    MsAuthError,
    Store,
    StoreNotOpenError,
    StoreUnavailableError,
)
from conftest import (
    ceil_s,
    documented_body,
    documented_bytes,
    make_keys,
    next_utc_midnight_ms,
    now_ms,
)

LIFESPAN: List[str] = []


class Resp(NamedTuple):
    status: int
    headers: Dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


# -- the downstream apps: they echo what the middleware told them ---------------------------------


def wsgi_app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    body = json.dumps(
        {
            "key_id": environ.get("ms_auth.key_id"),
            "plan": environ.get("ms_auth.plan"),
            "has_result": isinstance(environ.get("ms_auth.result"), CheckResult),
        }
    ).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    if environ["PATH_INFO"] == "/own-ratelimit":
        headers.append(("RateLimit", '"app";r=1;t=1'))
    start_response("200 OK", headers)
    return [body]


async def asgi_app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                LIFESPAN.append("startup")
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                LIFESPAN.append("shutdown")
                await send({"type": "lifespan.shutdown.complete"})
                return
    info = scope.get("ms_auth") or {}
    body = json.dumps(
        {
            "key_id": info.get("key_id"),
            "plan": info.get("plan"),
            "has_result": isinstance(info.get("result"), CheckResult),
        }
    ).encode()
    headers = [(b"content-type", b"application/json")]
    if scope["path"] == "/own-ratelimit":
        headers.append((b"ratelimit", b'"app";r=1;t=1'))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# -- servers and clients -------------------------------------------------------------------------


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


# urllib would send loopback requests to a proxy named in the environment: no proxies here.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def urllib_fetch(url: str, headers: Dict[str, str]) -> Resp:
    req = urllib.request.Request(url, headers=headers)
    try:
        with _opener.open(req, timeout=10) as resp:
            return Resp(resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read())
    except urllib.error.HTTPError as err:
        return Resp(err.code, {k.lower(): v for k, v in err.headers.items()}, err.read())


_httpx = httpx.Client(trust_env=False, timeout=10)


def httpx_fetch(url: str, headers: Dict[str, str]) -> Resp:
    resp = _httpx.get(url, headers=headers)
    return Resp(resp.status_code, {k.lower(): v for k, v in resp.headers.items()}, resp.content)


class Server(NamedTuple):
    base: str
    middleware: Union[ms_auth.wsgi.ApiKeyMiddleware, ms_auth.asgi.ApiKeyMiddleware]
    fetch: Callable[[str, Dict[str, str]], Resp]


@pytest.fixture(scope="module")
def wsgi_server() -> Iterator[Server]:
    mw = ms_auth.wsgi.ApiKeyMiddleware(wsgi_app, store=None)  # type: ignore[arg-type]
    httpd: WSGIServer = make_server("127.0.0.1", 0, mw, handler_class=QuietHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield Server(f"http://127.0.0.1:{httpd.server_port}", mw, urllib_fetch)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


@pytest.fixture(scope="module")
def asgi_server() -> Iterator[Server]:
    mw = ms_auth.asgi.ApiKeyMiddleware(asgi_app, store=None)  # type: ignore[arg-type]
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(mw, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield Server(f"http://127.0.0.1:{port}", mw, httpx_fetch)
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()


@pytest.fixture(params=["wsgi", "asgi"])
def http(request: pytest.FixtureRequest, store: Store) -> Iterator[Server]:
    server: Server = request.getfixturevalue(f"{request.param}_server")
    server.middleware.store = store
    try:
        yield server
    finally:
        server.middleware.store = None  # type: ignore[assignment]


def get(http: Server, key: Optional[str], path: str = "/", header: str = "X-API-Key") -> Resp:
    return http.fetch(http.base + path, {} if key is None else {header: key})


def get_lines(base: str, headers: List[Tuple[str, str]]) -> Resp:
    """A GET with these header lines as given: names may repeat, and keep their case."""
    url = urllib.parse.urlsplit(base)
    conn = HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=10)
    try:
        conn.putrequest("GET", "/")
        for name, value in headers:
            conn.putheader(name, value)
        conn.endheaders()
        resp = conn.getresponse()
        return Resp(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def assert_documented(resp: Resp, code: str) -> None:
    status = documented_body(code)["error"]["httpStatus"]
    assert resp.status == status
    assert resp.headers["content-type"] == "application/json"
    assert resp.body == documented_bytes(code)  # byte for byte
    assert resp.json() == documented_body(code)
    assert resp.headers["content-length"] == str(len(resp.body))


# -- every documented answer ---------------------------------------------------------------------


def test_missing(http: Server) -> None:
    resp = get(http, None)
    assert_documented(resp, "api_key_missing")
    assert "retry-after" not in resp.headers
    assert "ratelimit" not in resp.headers
    assert_documented(get(http, ""), "api_key_missing")


def test_invalid(http: Server) -> None:
    resp = get(http, "ms_live_0000000000000000000000000")
    assert_documented(resp, "api_key_invalid")
    assert "retry-after" not in resp.headers


def test_expired(http: Server, store: Store) -> None:
    keys = make_keys(store)
    resp = get(http, keys.expired.key)
    assert_documented(resp, "api_key_expired")
    assert "retry-after" not in resp.headers and "ratelimit" not in resp.headers


def test_revoked(http: Server, store: Store) -> None:
    keys = make_keys(store)
    resp = get(http, keys.revoked.key)
    assert_documented(resp, "api_key_revoked")
    assert "retry-after" not in resp.headers


def test_quota_exceeded(http: Server, store: Store) -> None:
    keys = make_keys(store)
    t0 = now_ms()
    first = get(http, keys.quota.key)
    assert first.status == 200
    resp = get(http, keys.quota.key)
    t1 = now_ms()
    assert_documented(resp, "api_key_quota_exceeded")
    midnight = next_utc_midnight_ms(t0)
    assert ceil_s(midnight - t1) <= int(resp.headers["retry-after"]) <= ceil_s(midnight - t0)
    assert resp.headers["ratelimit-policy"] == '"quota";q=1;w=86400'
    assert resp.headers["ratelimit"] == f'"quota";r=0;t={resp.headers["retry-after"]}'


def test_rate_limited(http: Server, store: Store) -> None:
    keys = make_keys(store)
    assert get(http, keys.rate.key).status == 200
    resp = get(http, keys.rate.key)
    assert_documented(resp, "rate_limit_exceeded")
    assert resp.headers["retry-after"] in ("59", "60")  # 60 s window, one slot, rounded up
    assert resp.headers["ratelimit-policy"] == '"rate";q=1;w=60'
    assert resp.headers["ratelimit"] == f'"rate";r=0;t={resp.headers["retry-after"]}'


def test_ok(http: Server, store: Store) -> None:
    keys = make_keys(store)
    resp = get(http, keys.ok.key)
    assert resp.status == 200
    assert resp.json() == {"key_id": keys.ok.id, "plan": "pro", "has_result": True}
    assert "retry-after" not in resp.headers
    assert resp.headers["ratelimit-policy"] == '"quota";q=1000;w=86400, "rate";q=100;w=60'
    assert resp.headers["ratelimit"].startswith('"quota";r=999;t=')
    assert resp.headers["ratelimit"].endswith(', "rate";r=99;t=1')
    assert '"rate";r=98;' in get(http, keys.ok.key).headers["ratelimit"]


def test_app_headers_are_not_overridden(http: Server, store: Store) -> None:
    keys = make_keys(store)
    resp = get(http, keys.ok.key, path="/own-ratelimit")
    assert resp.status == 200
    assert resp.headers["ratelimit"] == '"app";r=1;t=1'
    assert resp.headers["ratelimit-policy"] == '"quota";q=1000;w=86400, "rate";q=100;w=60'


def test_closed_store_fails_closed(http: Server, tmp_path: Any) -> None:
    s = Store(tmp_path / "closed.db")
    key = s.create_key().key
    s.close()
    http.middleware.store = s
    resp = get(http, key)
    # The library's status and body for the failure (ms_status_http, ms_error_json), as nginx
    # and Go answer it.
    assert resp.status == 503
    assert resp.headers["content-type"] == "application/json"
    assert resp.body == FAILURE_BODIES["store_not_open"]
    assert resp.headers["content-length"] == str(len(resp.body))


def test_repeated_key_header_is_invalid(http: Server, store: Store) -> None:
    # An app could read another copy than the one checked: the documented api_key_invalid answer,
    # and nothing counted. ASGI refuses without a check; a WSGI server joins the copies into one
    # value ("k1,k2", see the next test), which is no key.
    keys = make_keys(store)
    k, other = keys.ok.key, keys.quota.key
    for a, b in ((k, k), (k, other), (other, k), (k, "")):
        for name in ("X-API-Key", "x-api-key", "X-API-KEY"):
            resp = get_lines(http.base, [("X-API-Key", a), (name, b)])
            assert_documented(resp, "api_key_invalid")
            assert "retry-after" not in resp.headers and "ratelimit" not in resp.headers
    # "-" and "_" alike, as nginx's $http_* and CGI-style params (HTTP_X_API_KEY) name headers:
    # an underscore spelling beside another copy is a repeat, whichever comes first. (A WSGI
    # server puts both under HTTP_X_API_KEY; wsgiref joins them.)
    for lines in (
        [("X-API-Key", k), ("X_API_KEY", other)],
        [("X_API_KEY", other), ("X-API-Key", k)],
        [("x_api_key", k), ("X-Api_Key", k)],
    ):
        assert_documented(get_lines(http.base, lines), "api_key_invalid")
    assert store.get(keys.ok.id).usage.used == 0
    assert store.get(keys.quota.id).usage.used == 0
    resp = get_lines(http.base, [("X-API-Key", k), ("X-Other-Key", other)])
    assert resp.status == 200 and resp.headers["ratelimit"].startswith('"quota";r=999;')
    # A single copy spelled with underscores is the key header.
    resp = get_lines(http.base, [("X_API_KEY", k)])
    assert resp.status == 200 and resp.headers["ratelimit"].startswith('"quota";r=998;')


def test_wsgiref_joins_a_repeated_header() -> None:
    # What a WSGI middleware gets of two X-API-Key headers from wsgiref (the README says so).
    seen: List[Optional[str]] = []

    def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        seen.append(environ.get("HTTP_X_API_KEY"))
        start_response("200 OK", [("Content-Length", "0")])
        return [b""]

    httpd: WSGIServer = make_server("127.0.0.1", 0, app, handler_class=QuietHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{httpd.server_port}"
        assert get_lines(base, [("X-API-Key", "k1"), ("x-api-key", "k2")]).status == 200
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)
    assert seen == ["k1,k2"]


# -- middleware options (servers built per test) -------------------------------------------------


class BrokenStore:
    """A store whose library call fails, as a broken disk (or a bug) would make it."""

    def __init__(self, error: Optional[MsAuthError] = None) -> None:
        self.error = error or StoreUnavailableError(102, "disk I/O error", "check")

    def check(self, key: Union[str, bytes, None], now_ms: Optional[int] = None) -> CheckResult:
        raise self.error


# What the library answers for its failures (ms_error_json), hard-coded as nginx's and Go's tests
# have them: one body and one status per failure on every host.
FAILURE_BODIES = {
    code: json.dumps(
        {"success": False, "error": {"code": code, "message": message, "httpStatus": status}},
        separators=(",", ":"),
    ).encode()
    for code, message, status in (
        ("invalid_argument", "Invalid argument.", 500),
        ("store_not_open", "Authentication store is not open.", 503),
        ("store_unavailable", "Authentication store is unavailable.", 503),
        ("internal_error", "Internal error.", 500),
    )
}
FAILURES = [
    (StoreUnavailableError(102, "disk I/O error on /secret/keys.db", "check"), 503, "Service Unavailable"),
    (StoreNotOpenError(101, "the Store was closed", "check"), 503, "Service Unavailable"),
    (InternalError(104, "panic at /secret/src/x.rs", "check"), 500, "Internal Server Error"),
    (InvalidArgumentError(100, "now_ms is in seconds", "check"), 500, "Internal Server Error"),
]


@pytest.mark.parametrize("error,status,reason", FAILURES)
def test_wsgi_library_failure_and_fail_open(error: MsAuthError, status: int, reason: str) -> None:
    mw = ms_auth.wsgi.ApiKeyMiddleware(wsgi_app, BrokenStore(error))
    line, headers, body = call_wsgi(mw, {"HTTP_X_API_KEY": "anything"})
    assert line == f"{status} {reason}"
    assert body == FAILURE_BODIES[error.code_name]
    assert ("Content-Type", "application/json") in headers
    assert ("Content-Length", str(len(body))) in headers
    assert b"secret" not in body  # details go to the log, not to the client
    mw_open = ms_auth.wsgi.ApiKeyMiddleware(wsgi_app, BrokenStore(error), fail_open=True)
    line, _, body = call_wsgi(mw_open, {})
    assert line == "200 OK"
    assert json.loads(body)["key_id"] is None


def test_wsgi_custom_header(store: Store) -> None:
    created = store.create_key(plan="p")
    mw = ms_auth.wsgi.ApiKeyMiddleware(wsgi_app, store, header="Authorization-Key")
    status, _, body = call_wsgi(mw, {"HTTP_AUTHORIZATION_KEY": created.key})
    assert status == "200 OK" and json.loads(body)["plan"] == "p"
    status, _, body = call_wsgi(mw, {"HTTP_X_API_KEY": created.key})
    assert status == "401 Unauthorized" and body == documented_bytes("api_key_missing")


def test_wsgi_key_bytes_are_latin1_roundtripped(store: Store) -> None:
    created = store.create_key()
    mw = ms_auth.wsgi.ApiKeyMiddleware(wsgi_app, store)
    assert call_wsgi(mw, {"HTTP_X_API_KEY": created.key + "\u00e9"})[0] == "401 Unauthorized"
    assert call_wsgi(mw, {"HTTP_X_API_KEY": created.key + "\u20ac"})[0] == "401 Unauthorized"
    assert call_wsgi(mw, {"HTTP_X_API_KEY": created.key})[0] == "200 OK"


def call_wsgi(app: Any, extra: Dict[str, str]) -> Tuple[str, List[Tuple[str, str]], bytes]:
    environ: Dict[str, Any] = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", **extra}
    seen: Dict[str, Any] = {}

    def start_response(status: str, headers: List[Tuple[str, str]], exc_info: Any = None) -> Any:
        seen["status"], seen["headers"] = status, headers

    body = b"".join(app(environ, start_response))
    return seen["status"], seen["headers"], body


# -- ASGI specifics, driven in-process -----------------------------------------------------------


def call_asgi(app: Any, scope: Dict[str, Any]) -> List[Dict[str, Any]]:
    sent: List[Dict[str, Any]] = []

    async def receive() -> Dict[str, Any]:
        return {"type": "websocket.connect"} if scope["type"] == "websocket" else {
            "type": "http.request", "body": b"", "more_body": False}

    async def send(message: Dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def http_scope(headers: List[Tuple[bytes, bytes]]) -> Dict[str, Any]:
    return {"type": "http", "method": "GET", "path": "/", "headers": headers}


def test_asgi_lifespan_passes_through(asgi_server: Server) -> None:
    assert "startup" in LIFESPAN  # uvicorn ran with lifespan="on" through the middleware


def test_asgi_repeated_header_is_invalid(store: Store) -> None:
    created = store.create_key()
    mw = ms_auth.asgi.ApiKeyMiddleware(asgi_app, store)
    k = created.key.encode()
    sent = call_asgi(mw, http_scope([(b"x-api-key", k), (b"x-api-key", k)]))
    assert sent[0]["status"] == 401 and sent[1]["body"] == documented_bytes("api_key_invalid")
    sent = call_asgi(mw, http_scope([(b"X-Api-Key", k)]))
    assert sent[0]["status"] == 200
    for headers in ([(b"x-api-key", k), (b"x_api_key", k)], [(b"X_API_KEY", k), (b"x-api-key", k)]):
        sent = call_asgi(mw, http_scope(headers))
        assert sent[0]["status"] == 401 and sent[1]["body"] == documented_bytes("api_key_invalid")
    assert call_asgi(mw, http_scope([(b"x_api_key", k)]))[0]["status"] == 200
    # Refused before any check: a failing store that fails open would have let it through.
    mw_open = ms_auth.asgi.ApiKeyMiddleware(asgi_app, BrokenStore(), fail_open=True)
    sent = call_asgi(mw_open, http_scope([(b"x-api-key", k), (b"X-API-KEY", k)]))
    assert sent[0]["status"] == 401 and sent[1]["body"] == documented_bytes("api_key_invalid")
    ws = {"type": "websocket", "path": "/ws", "headers": [(b"x-api-key", k), (b"x-api-key", k)],
          "extensions": {"websocket.http.response": {}}}
    sent = call_asgi(mw, ws)
    assert sent[0]["type"] == "websocket.http.response.start" and sent[0]["status"] == 401
    assert sent[1]["body"] == documented_bytes("api_key_invalid")


@pytest.mark.parametrize("error,status,reason", FAILURES)
def test_asgi_library_failure_and_fail_open(error: MsAuthError, status: int, reason: str) -> None:
    mw = ms_auth.asgi.ApiKeyMiddleware(asgi_app, BrokenStore(error))
    sent = call_asgi(mw, http_scope([(b"x-api-key", b"k")]))
    assert sent[0]["status"] == status
    assert (b"content-type", b"application/json") in sent[0]["headers"]
    assert sent[1]["body"] == FAILURE_BODIES[error.code_name]
    mw_open = ms_auth.asgi.ApiKeyMiddleware(asgi_app, BrokenStore(error), fail_open=True)
    sent = call_asgi(mw_open, http_scope([]))
    assert sent[0]["status"] == 200


def test_asgi_websocket_handshakes_are_checked(store: Store) -> None:
    created = store.create_key(plan="ws")
    seen: Dict[str, Any] = {}

    async def ws_app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        seen.update(scope["ms_auth"])
        await send({"type": "websocket.accept"})

    mw = ms_auth.asgi.ApiKeyMiddleware(ws_app, store)
    ws = {"type": "websocket", "path": "/ws", "headers": [(b"x-api-key", created.key.encode())]}
    assert call_asgi(mw, ws) == [{"type": "websocket.accept"}]
    assert seen["key_id"] == created.id and seen["plan"] == "ws"

    # Without the response extension the handshake is refused by a policy-violation close.
    assert call_asgi(mw, {"type": "websocket", "path": "/ws", "headers": []}) == [
        {"type": "websocket.close", "code": 1008}
    ]
    # With it, the client gets the documented answer.
    sent = call_asgi(mw, {"type": "websocket", "path": "/ws", "headers": [],
                          "extensions": {"websocket.http.response": {}}})
    assert sent[0]["type"] == "websocket.http.response.start" and sent[0]["status"] == 401
    assert sent[1] == {"type": "websocket.http.response.body",
                       "body": documented_bytes("api_key_missing")}
