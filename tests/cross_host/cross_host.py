"""The same requests through nginx, the WSGI and ASGI middlewares and the Go middleware get the same
answer.

Each host has its own store holding the same keys (the same plaintexts, imported) with the same
policies, so one request string meets one policy everywhere. For each step (an admitted request, a
quota refusal, a rate refusal, a missing key, the key header spelled X_API_KEY, alone and beside
X-API-Key) the four answers must agree byte for byte on the status, the body and the Content-Type,
Retry-After, RateLimit-Policy and RateLimit fields. So must their answers to a library failure (a
store whose counters file cannot be opened): one status and body per failure, the library's.

No host takes a fixed clock (nginx reads its own), so the steps of a round are sent, host after
host, within one wall-clock second: every `t` and Retry-After counts whole seconds to an instant
that is a whole second (a period's end) or a fixed time after the request (a rate window), so
within one second they cannot differ. A round that ran over a second is run again with new keys.

Run by scripts/cross_host.sh (as root, with the Python venv of bindings/python, Go and nginx).
"""

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import unittest
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(REPO, "bindings", "nginx", "tests"))

import test_nginx_module as ngx  # noqa: E402  (the nginx harness: store dirs as its worker user)

import uvicorn  # noqa: E402

import ms_auth.asgi  # noqa: E402
import ms_auth.wsgi  # noqa: E402
from ms_auth import Store  # noqa: E402

GO_SERVER = os.environ.get("MS_AUTH_CROSS_GO_SERVER", os.path.join(REPO, "target", "cross-host", "goserver"))
FIELDS = ("Content-Type", "Retry-After", "RateLimit-Policy", "RateLimit")
HOSTS = ("nginx", "go", "wsgi", "asgi")
# The worker user cannot reach the venv's interpreter (under /root with pyenv): Debian's python3 with
# the package's sources, which need only the standard library, writes nginx's store as that user.
WORKER_PYTHON = os.environ.get("MS_AUTH_CROSS_WORKER_PYTHON", "/usr/bin/python3")

# name -> create_key arguments: one policy of each kind the answer describes.
POLICIES = {
    "ok": {"quota": (10, "daily"), "rate_limit": (5, 60_000)},
    # No rate limit beside it: a bucket refilling within milliseconds would make r and t depend on
    # the gap between two requests, which differs between hosts.
    "quota": {"quota": (1, "monthly"), "rate_limit": None},
    "rate": {"rate_limit": (1, 60_000)},
}
ATTACKER = "ms_live_not_the_checked_key"
# (label, header lines as (name, key name)): run in this order in every round. nginx, CGI-style
# params and WSGI's environ name headers with "-" and "_" alike: X_API_KEY is the key header too,
# and beside X-API-Key a repeat, refused unchecked.
STEPS = [
    ("admitted", [("X-API-Key", "ok")]),
    ("admitted, the header spelled X_API_KEY", [("X_API_KEY", "ok")]),
    ("X-API-Key, then X_API_KEY: refused", [("X-API-Key", "ok"), ("X_API_KEY", ATTACKER)]),
    ("X_API_KEY, then X-API-Key: refused", [("X_API_KEY", ATTACKER), ("X-API-Key", "ok")]),
    ("quota: last one admitted", [("X-API-Key", "quota")]),
    ("quota refused", [("X-API-Key", "quota")]),
    ("rate: admitted", [("X-API-Key", "rate")]),
    ("rate refused", [("X-API-Key", "rate")]),
    ("missing key", []),
]
STORE_UNAVAILABLE = (
    b'{"success":false,"error":{"code":"store_unavailable","message":"Authentication store is unavailable.",'
    b'"httpStatus":503}}'
)


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok\n"]


async def asgi_app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok\n"})


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass


class ThreadedWSGIServer(WSGIServer):
    def process_request(self, request, client_address):
        threading.Thread(target=self._handle, args=(request, client_address), daemon=True).start()

    def _handle(self, request, client_address):
        try:
            self.finish_request(request, client_address)
        finally:
            self.shutdown_request(request)


def ask(port, lines):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.putrequest("GET", "/")
        for name, value in lines:
            c.putheader(name, value)
        c.endheaders()
        r = c.getresponse()
        body = r.read()
        return (r.status, body) + tuple(r.headers.get(f) for f in FIELDS)
    finally:
        c.close()


def start_uvicorn(asgi):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(asgi, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise AssertionError("uvicorn did not start")
        time.sleep(0.02)
    return server, thread, sock


class CrossHost(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.env = ngx.Env()
        cls.stores = {h: os.path.join(cls.env.make_store_dir("cross-" + h), "keys.db") for h in HOSTS}
        # The nginx store is its workers' own (made and written as their user); the others are
        # this (root) process's.
        for h in HOSTS:
            if h != "nginx":
                shutil.chown(os.path.dirname(cls.stores[h]), "root", "root")
        cls.env.create_key("--plan", "bootstrap", store=cls.stores["nginx"])
        with Store(cls.stores["go"]) as s:
            s.create_key(plan="bootstrap")
        cls.nginx = ngx.Nginx(cls.env, "cross-host", "", workers=1)
        cls.nginx_port = ngx.free_port()
        cls.nginx.write_conf(
            """
    ms_auth_store %s;
    server {
        listen 127.0.0.1:%d;
        underscores_in_headers on;
        location / { ms_auth on; default_type text/plain; return 200 "ok\\n"; }
    }"""
            % (cls.stores["nginx"], cls.nginx_port)
        )
        cls.nginx.start()
        cls.go = subprocess.Popen([GO_SERVER, cls.stores["go"]], stdout=subprocess.PIPE, text=True)
        cls.go_port = int(cls.go.stdout.readline())
        cls.py_store = Store(cls.stores["wsgi"])
        cls.wsgi = make_server(
            "127.0.0.1", 0, ms_auth.wsgi.ApiKeyMiddleware(app, cls.py_store), server_class=ThreadedWSGIServer,
            handler_class=QuietHandler,
        )
        threading.Thread(target=cls.wsgi.serve_forever, daemon=True).start()
        cls.asgi_store = Store(cls.stores["asgi"])
        cls.asgi, cls.asgi_thread, cls.asgi_sock = start_uvicorn(
            ms_auth.asgi.ApiKeyMiddleware(asgi_app, cls.asgi_store)
        )
        cls.ports = {
            "nginx": cls.nginx_port,
            "go": cls.go_port,
            "wsgi": cls.wsgi.server_port,
            "asgi": cls.asgi_sock.getsockname()[1],
        }

    @classmethod
    def tearDownClass(cls):
        cls.asgi.should_exit = True
        cls.asgi_thread.join(20)
        cls.asgi_sock.close()
        cls.asgi_store.close()
        cls.wsgi.shutdown()
        cls.py_store.close()
        cls.go.terminate()
        cls.go.wait(10)
        ngx._stop_all()
        cls.env.cleanup()

    def keys_everywhere(self):
        """New keys, the same in the three stores (imported into the running hosts' stores)."""
        keys = {}
        for name, spec in POLICIES.items():
            keys[name] = self.py_store.create_key(expires_at_ms=None, **spec).key
        # Another process's store is written by another process (the Go host's keeps it open):
        # changes reach a running host at its next check.
        self.import_keys(self.stores["go"], keys, {})
        self.import_keys(self.stores["asgi"], keys, {})
        self.import_keys(self.stores["nginx"], keys, ngx.as_worker())
        return keys

    def import_keys(self, store, keys, user):
        # In a child: nginx's as its worker user, so that every file the store writes stays the
        # workers'; and no two handles on one database in this process.
        python, path = (WORKER_PYTHON, os.path.join(REPO, "bindings", "python", "src")) if user else (sys.executable, "")
        code = (
            "import json, sys\n"
            "from ms_auth import Store\n"
            "keys, policies = json.loads(sys.argv[2]), json.loads(sys.argv[3])\n"
            "with Store(sys.argv[1]) as s:\n"
            "    for name, spec in policies.items():\n"
            "        spec = {k: v and tuple(v) for k, v in spec.items()}\n"
            "        s.create_key(expires_at_ms=None, key=keys[name], **spec)\n"
        )
        p = subprocess.run(
            [python, "-c", code, store, json.dumps(keys), json.dumps(POLICIES)],
            capture_output=True, text=True, timeout=60, cwd="/tmp",
            env=dict(os.environ, HOME="/tmp", PYTHONPATH=path, PYTHONDONTWRITEBYTECODE="1"),
            **user,
        )
        self.assertEqual(p.returncode, 0, p.stderr)

    def round(self, keys):
        """One round within one wall-clock second: {step: {host: answer}}, or None if it ran over."""
        while not 0.02 <= time.time() % 1 <= 0.2:
            time.sleep(0.005)
        second = int(time.time())
        answers = {}
        for label, lines in STEPS:
            lines = [(name, keys.get(key, key)) for name, key in lines]
            answers[label] = {host: ask(port, lines) for host, port in self.ports.items()}
        return answers if int(time.time()) == second else None

    def assertAlike(self, by_host):
        for host in HOSTS[1:]:
            self.assertEqual(by_host[host], by_host["nginx"], "%s vs nginx" % host)

    def test_the_hosts_answer_alike(self):
        for _attempt in range(5):
            answers = self.round(self.keys_everywhere())
            if answers is not None:
                break
        else:
            self.fail("no round fitted in one second")
        for label, by_host in answers.items():
            with self.subTest(step=label):
                self.assertAlike(by_host)
        # The agreed answers are the documented ones, w included.
        ok = answers["admitted"]["nginx"]
        self.assertEqual(ok[:4], (200, b"ok\n", "text/plain", None))
        self.assertEqual(ok[4], '"quota";q=10;w=86400, "rate";q=5;w=60')
        self.assertRegex(ok[5], r'^"quota";r=9;t=\d+, "rate";r=4;t=12$')
        ok = answers["admitted, the header spelled X_API_KEY"]["nginx"]
        self.assertEqual(ok[:2], (200, b"ok\n"))
        self.assertRegex(ok[5], r'^"quota";r=8;t=\d+, "rate";r=3;t=24$')
        invalid = (401, ngx.INVALID, "application/json", None, None, None)
        self.assertEqual(answers["X-API-Key, then X_API_KEY: refused"]["nginx"], invalid)
        self.assertEqual(answers["X_API_KEY, then X-API-Key: refused"]["nginx"], invalid)
        quota = answers["quota refused"]["nginx"]
        self.assertEqual(quota[:3], (429, ngx.QUOTA, "application/json"))
        self.assertRegex(quota[4], r'^"quota";q=1;w=(2419200|2505600|2592000|2678400)$')
        self.assertEqual(quota[5], '"quota";r=0;t=%s' % quota[3])
        rate = answers["rate refused"]["nginx"]
        self.assertEqual(rate, (429, ngx.RATE, "application/json", "60", '"rate";q=1;w=60', '"rate";r=0;t=60'))
        missing = answers["missing key"]["nginx"]
        self.assertEqual(missing, (401, ngx.MISSING, "application/json", None, None, None))

    def test_a_library_failure_is_answered_alike(self):
        keys = self.keys_everywhere()
        lines = [("X-API-Key", keys["ok"])]
        # A real failure of every host's check: its store's counters file (which a check maps) is
        # replaced by a directory, which no process can open as a file.
        moved = []
        try:
            for store in self.stores.values():
                counters = store + "-counters"
                os.rename(counters, counters + ".away")
                moved.append(counters)
                os.mkdir(counters)
            # A check looks at the file's path at most every 100 ms.
            time.sleep(0.5)
            answers = {host: ask(port, lines) for host, port in self.ports.items()}
        finally:
            for counters in moved:
                if os.path.isdir(counters):
                    os.rmdir(counters)
                os.rename(counters + ".away", counters)
        self.assertAlike(answers)
        self.assertEqual(answers["nginx"], (503, STORE_UNAVAILABLE, "application/json", None, None, None))
        # Every host decides again once the file is back.
        deadline = time.monotonic() + 10
        for host, port in self.ports.items():
            while ask(port, lines)[0] != 200:
                self.assertLess(time.monotonic(), deadline, "%s did not recover" % host)
                time.sleep(0.1)

if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("run as root: nginx's master starts its workers as user %s" % ngx.WORKER_USER)
    unittest.main(verbosity=2)
