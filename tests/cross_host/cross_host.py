"""The same requests through nginx, the WSGI middleware and the Go middleware get the same answer.

Each host has its own store holding the same keys (the same plaintexts, imported) with the same
policies, so one request string meets one policy everywhere. For each step (an admitted request, a
quota refusal, a rate refusal, a missing key) the three answers must agree byte for byte on the
status, the body and the Retry-After, RateLimit-Policy and RateLimit fields.

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

from ms_auth import Store  # noqa: E402
from ms_auth.wsgi import ApiKeyMiddleware  # noqa: E402

GO_SERVER = os.environ.get("MS_AUTH_CROSS_GO_SERVER", os.path.join(REPO, "target", "cross-host", "goserver"))
FIELDS = ("Retry-After", "RateLimit-Policy", "RateLimit")
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
# (label, key name or None for no key header): run in this order in every round.
STEPS = [
    ("admitted", "ok"),
    ("quota: last one admitted", "quota"),
    ("quota refused", "quota"),
    ("rate: admitted", "rate"),
    ("rate refused", "rate"),
    ("missing key", None),
]


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok\n"]


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


def ask(port, key):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.putrequest("GET", "/")
        if key is not None:
            c.putheader("X-API-Key", key)
        c.endheaders()
        r = c.getresponse()
        body = r.read()
        return (r.status, body) + tuple(r.headers.get(f) for f in FIELDS)
    finally:
        c.close()


class CrossHost(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.env = ngx.Env()
        cls.stores = {h: os.path.join(cls.env.make_store_dir("cross-" + h), "keys.db") for h in ("py", "go", "nginx")}
        # The nginx store is its workers' own (made and written as their user); the others are
        # this (root) process's.
        for h in ("py", "go"):
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
        location / { ms_auth on; default_type text/plain; return 200 "ok\\n"; }
    }"""
            % (cls.stores["nginx"], cls.nginx_port)
        )
        cls.nginx.start()
        cls.go = subprocess.Popen([GO_SERVER, cls.stores["go"]], stdout=subprocess.PIPE, text=True)
        cls.go_port = int(cls.go.stdout.readline())
        cls.py_store = Store(cls.stores["py"])
        cls.wsgi = make_server(
            "127.0.0.1", 0, ApiKeyMiddleware(app, cls.py_store), server_class=ThreadedWSGIServer,
            handler_class=QuietHandler,
        )
        threading.Thread(target=cls.wsgi.serve_forever, daemon=True).start()
        cls.ports = {"nginx": cls.nginx_port, "go": cls.go_port, "wsgi": cls.wsgi.server_port}

    @classmethod
    def tearDownClass(cls):
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
        for label, name in STEPS:
            key = keys[name] if name else None
            answers[label] = {host: ask(port, key) for host, port in self.ports.items()}
        return answers if int(time.time()) == second else None

    def test_the_three_hosts_answer_alike(self):
        for _attempt in range(5):
            answers = self.round(self.keys_everywhere())
            if answers is not None:
                break
        else:
            self.fail("no round fitted in one second")
        for label, by_host in answers.items():
            with self.subTest(step=label):
                self.assertEqual(by_host["go"], by_host["nginx"], "Go vs nginx")
                self.assertEqual(by_host["wsgi"], by_host["nginx"], "WSGI vs nginx")
        # The agreed answers are the documented ones, w included.
        ok = answers["admitted"]["nginx"]
        self.assertEqual(ok[:3], (200, b"ok\n", None))
        self.assertEqual(ok[3], '"quota";q=10;w=86400, "rate";q=5;w=60')
        self.assertRegex(ok[4], r'^"quota";r=9;t=\d+, "rate";r=4;t=12$')
        quota = answers["quota refused"]["nginx"]
        self.assertEqual(quota[0], 429)
        self.assertIn(b'"api_key_quota_exceeded"', quota[1])
        self.assertRegex(quota[3], r'^"quota";q=1;w=(2419200|2505600|2592000|2678400)$')
        self.assertEqual(quota[4], '"quota";r=0;t=%s' % quota[2])
        rate = answers["rate refused"]["nginx"]
        self.assertEqual((rate[0], rate[2], rate[3], rate[4]), (429, "60", '"rate";q=1;w=60', '"rate";r=0;t=60'))
        missing = answers["missing key"]["nginx"]
        self.assertEqual((missing[0], missing[2:]), (401, (None, None, None)))


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("run as root: nginx's master starts its workers as user %s" % ngx.WORKER_USER)
    unittest.main(verbosity=2)
