#!/usr/bin/env python3
"""End-to-end tests of ngx_http_ms_auth_module against a real nginx.

nginx runs as root (master) with `worker_processes 2` on 127.0.0.1 and workers
as the unprivileged user "nobody", the way it is deployed; keys are made with
the `ms-auth` CLI. Started by bindings/nginx/test.sh, which builds the module.

Environment: MS_AUTH_REPO (repository root), MS_AUTH_TARGET_DIR (libms_auth and
the ms-auth CLI; default <repo>/target/release).
"""

import atexit
import calendar
import grp
import http.client
import json
import math
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.environ.get("MS_AUTH_REPO", os.path.join(HERE, "..", "..", "..")))
LIB_DIR = os.path.abspath(os.environ.get("MS_AUTH_TARGET_DIR", os.path.join(REPO, "target", "release")))
MODULE = os.path.join(REPO, "target", "nginx", "ngx_http_ms_auth_module.so")
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
WORKER_USER, WORKER_GROUP = "nobody", "nogroup"


def body_of(code, message, http_status):
    """The documented error body, byte for byte."""
    return ('{"success":false,"error":{"code":"%s","message":"%s","httpStatus":%d}}'
            % (code, message, http_status)).encode()


MISSING = body_of("api_key_missing", "API key is missing.", 401)
INVALID = body_of("api_key_invalid", "API key is invalid.", 401)
EXPIRED = body_of("api_key_expired", "API key has expired.", 401)
REVOKED = body_of("api_key_revoked", "API key has been revoked.", 401)
QUOTA = body_of("api_key_quota_exceeded", "API key quota has been exceeded.", 429)
RATE = body_of("rate_limit_exceeded", "Too many requests. Please try again later.", 429)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_worker():
    """subprocess arguments that run a command as the nginx worker user."""
    return {"user": WORKER_USER, "group": WORKER_GROUP, "extra_groups": []}


class Env:
    """Everything one test run shares: paths, the CLI, the store."""

    def __init__(self):
        self.prefix = os.path.join(REPO, "target", "nginx", "test-run")
        self.stop_leftovers()
        shutil.rmtree(self.prefix, ignore_errors=True)
        os.makedirs(self.prefix)
        # The store lives where the unprivileged workers can reach it whatever
        # the permissions of the checkout's parent folders.
        self.tmp = tempfile.mkdtemp(prefix="ms-auth-nginx-")
        os.chmod(self.tmp, 0o755)
        self.cli = os.path.join(self.tmp, "ms-auth")
        shutil.copy2(os.path.join(LIB_DIR, "ms-auth"), self.cli)
        os.chmod(self.cli, 0o755)
        self.store_dir = self.make_store_dir("store")
        self.store = os.path.join(self.store_dir, "keys.db")
        # A store is made by the CLI; the first key creates the file.
        self.create_key("--plan", "bootstrap")

    def stop_leftovers(self):
        """Stops an nginx that an earlier, killed run of these tests left behind."""
        if not os.path.isdir(self.prefix):
            return
        for name in os.listdir(self.prefix):
            try:
                with open(os.path.join(self.prefix, name, "nginx.pid")) as f:
                    pid = int(f.read().strip())
                with open("/proc/%d/cmdline" % pid, "rb") as f:
                    cmdline = f.read()
            except (OSError, ValueError):
                continue
            if cmdline.startswith(b"nginx: master process") and self.prefix.encode() in cmdline:
                os.kill(pid, signal.SIGTERM)
                time.sleep(0.5)

    def make_store_dir(self, name):
        d = os.path.join(self.tmp, name)
        os.makedirs(d)
        os.chown(d, pwd.getpwnam(WORKER_USER).pw_uid, grp.getgrnam(WORKER_GROUP).gr_gid)
        os.chmod(d, 0o755)
        return d

    def run_cli(self, *args, store=None):
        # As the worker user, as the README advises: files it creates stay usable by workers.
        p = subprocess.run([self.cli, "--db", store or self.store, *args],
                           capture_output=True, text=True, timeout=60, cwd=self.tmp, **as_worker())
        if p.returncode != 0:
            raise AssertionError("ms-auth %s failed (%d): %s" % (" ".join(args), p.returncode, p.stderr))
        return p.stdout

    def create_key(self, *args, store=None):
        rec = json.loads(self.run_cli("key", "create", *args, "--json", store=store))
        assert rec["key"] and rec["id"], rec
        return rec

    def cleanup(self):
        shutil.rmtree(self.tmp, ignore_errors=True)


class Nginx:
    """One nginx: master as root, workers as nobody, private prefix, daemon on."""

    def __init__(self, env, name, http_body, workers=2):
        self.env = env
        self.dir = os.path.join(env.prefix, name)
        for sub in ("", "html", "tmp"):
            os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
        self.conf = os.path.join(self.dir, "nginx.conf")
        self.pid_file = os.path.join(self.dir, "nginx.pid")
        self.error_log = os.path.join(self.dir, "error.log")
        self.access_log = os.path.join(self.dir, "access.log")
        self.workers = workers
        self.write_conf(http_body)
        self.master = None

    def render(self, http_body, workers=None):
        d = self.dir
        return """
load_module {module};
user {user} {group};
worker_processes {workers};
master_process on;
daemon on;
pid {pid};
error_log {error_log} info;
events {{ worker_connections 1024; }}
http {{
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    log_format ms '$request_uri $status key=$ms_auth_key_id plan=$ms_auth_plan status=$ms_auth_status';
    access_log {access_log} ms;
{body}
}}
""".format(module=MODULE, user=WORKER_USER, group=WORKER_GROUP,
           workers=workers or self.workers, pid=self.pid_file, error_log=self.error_log,
           access_log=self.access_log, d=d, body=http_body)

    def write_conf(self, http_body, path=None):
        with open(path or self.conf, "w") as f:
            f.write(self.render(http_body))

    def cmd(self, *args, conf=None):
        return subprocess.run([NGINX, "-p", self.dir + "/", "-c", conf or self.conf, *args],
                              capture_output=True, text=True, timeout=60)

    def start(self):
        p = self.cmd()
        if p.returncode != 0:
            raise AssertionError("nginx did not start: " + p.stderr + self.log_tail())
        deadline = time.time() + 10
        while time.time() < deadline:
            if os.path.exists(self.pid_file) and len(self.worker_pids()) == self.workers:
                break
            time.sleep(0.05)
        with open(self.pid_file) as f:
            self.master = int(f.read().strip())
        _RUNNING.add(self)

    def stop(self):
        if self.master is None:
            return
        try:
            os.kill(self.master, signal.SIGTERM)
            deadline = time.time() + 10
            while time.time() < deadline and os.path.exists("/proc/%d" % self.master):
                time.sleep(0.05)
            if os.path.exists("/proc/%d" % self.master):
                os.kill(self.master, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.master = None
        _RUNNING.discard(self)

    def worker_pids(self):
        """Pids of this nginx's workers (children of the master)."""
        try:
            with open(self.pid_file) as f:
                master = int(f.read().strip())
        except (OSError, ValueError):
            return set()
        out = subprocess.run(["ps", "-o", "pid=,args=", "--ppid", str(master)],
                             capture_output=True, text=True).stdout
        return {int(l.split()[0]) for l in out.splitlines() if "worker process" in l
                and "shutting down" not in l}

    def log_tail(self):
        try:
            with open(self.error_log) as f:
                return "\n--- error.log ---\n" + "".join(f.readlines()[-30:])
        except OSError:
            return ""

    def error_log_text(self):
        with open(self.error_log) as f:
            return f.read()


_RUNNING = set()


def _stop_all():
    for n in list(_RUNNING):
        n.stop()


atexit.register(_stop_all)
signal.signal(signal.SIGTERM, lambda *a: sys.exit(1))


def request(port, path="/", key=None, headers=(), method="GET", body=None, conn=None):
    """One request; returns (status, HTTPMessage headers, body bytes)."""
    own = conn is None
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        c.putrequest(method, path)
        if key is not None:
            c.putheader("X-API-Key", key)
        for k, v in headers:
            c.putheader(k, v)
        if body is not None:
            c.putheader("Content-Length", str(len(body)))
        c.endheaders(body)
        r = c.getresponse()
        data = r.read()
        return r.status, r.headers, data
    finally:
        if own:
            c.close()


ENV = None
MAIN = None       # the nginx most tests talk to
PORT = PORT2 = None


def main_http_body(port, port2, store, extra=""):
    return """
    ms_auth_store {store};

    server {{
        listen 127.0.0.1:{port} reuseport;
        add_header X-Worker $pid always;
        # X_API_KEY is then a header nginx keeps, and its $http_x_api_key, as X-API-Key's
        underscores_in_headers on;

        # "return" runs in the rewrite phase: the module must decide before it
        location / {{ ms_auth on; return 200 "ok $ms_auth_key_id $ms_auth_plan\\n"; }}
        location = /open {{ return 200 "open\\n"; }}
        location /static/ {{ ms_auth on; alias {html}/; }}
        location /custom {{ ms_auth on; ms_auth_header Authorization-Key; return 200 "custom\\n"; }}
        location /redirect {{ ms_auth on; rewrite ^ /final last; }}
        location = /final {{ ms_auth on; return 200 "final $ms_auth_key_id\\n"; }}
        location /iffy {{ ms_auth on; if ($arg_x) {{ return 200 "if\\n"; }} return 200 "iffy\\n"; }}
        location /up {{
            ms_auth on;
            proxy_set_header X-MS-Key-Id $ms_auth_key_id;
            proxy_set_header X-MS-Plan $ms_auth_plan;
            proxy_set_header X-MS-Status $ms_auth_status;
            proxy_pass http://127.0.0.1:{port}/echo;
        }}
        location = /echo {{ return 200 "$http_x_ms_key_id|$http_x_ms_plan|$http_x_ms_status"; }}
        location = /seen {{ ms_auth on; return 200 "$http_x_api_key"; }}
        location /limits {{
            ms_auth on;
            return 200 "$ms_auth_ratelimit_policy|$ms_auth_ratelimit";
        }}
        location /failopen {{ ms_auth on; ms_auth_failure open; return 200 "open:$ms_auth_status\\n"; }}
        # The README's forms with auth_request (which runs in the access phase: content here is a
        # file, as a "return" would answer before it). ms_auth in the protected location decides
        # first...
        location /also-auth-request/ {{ ms_auth on; auth_request /other-auth; alias {html}/; }}
        location = /other-auth {{ internal; return 403; }}
        location /allowed-by-other-auth/ {{ ms_auth on; auth_request /other-auth-allows; alias {html}/; }}
        location = /other-auth-allows {{ internal; return 204; }}
        # ...and what nginx makes of ms_auth in a location auth_request calls (not supported)
        location /behind-auth-request/ {{ auth_request /ms-auth-check; alias {html}/; }}
        location = /ms-auth-check {{ internal; ms_auth on; return 204; }}
{extra}
    }}

    server {{
        listen 127.0.0.1:{port2};
        ms_auth on;                      # inherited by every location below
        location / {{ return 200 "inherited\\n"; }}
        location = /health {{ ms_auth off; return 200 "healthy\\n"; }}
    }}
""".format(store=store, port=port, port2=port2, html=os.path.join(ENV.prefix, "main", "html"),
           extra=extra)


def setUpModule():
    global ENV, MAIN, PORT, PORT2
    ENV = Env()
    PORT, PORT2 = free_port(), free_port()
    MAIN = Nginx(ENV, "main", "")
    MAIN.write_conf(main_http_body(PORT, PORT2, ENV.store))
    with open(os.path.join(MAIN.dir, "html", "file.txt"), "w") as f:
        f.write("static content\n")
    MAIN.start()


def tearDownModule():
    _stop_all()
    if ENV:
        ENV.cleanup()


def next_utc_midnight_ms(now_s):
    t = time.gmtime(now_s)
    return (calendar.timegm((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0)) + 86400) * 1000


class Build(unittest.TestCase):
    def test_module_links_libms_auth_statically(self):
        out = subprocess.run(["ldd", MODULE], capture_output=True, text=True).stdout
        self.assertNotIn("libms_auth", out)
        # the library's symbols stay inside the module (--exclude-libs)
        syms = subprocess.run(["nm", "-D", "--defined-only", MODULE],
                              capture_output=True, text=True).stdout
        self.assertNotRegex(syms, r"\bms_store_check\b")
        self.assertIn("ngx_http_ms_auth_module", syms)


class Answers(unittest.TestCase):
    """Every documented answer over HTTP, with exact bodies and headers."""

    def assertRejected(self, resp, status, body):
        code, headers, data = resp
        self.assertEqual(code, status, data)
        self.assertEqual(data, body)
        self.assertEqual(headers["Content-Type"], "application/json")
        self.assertEqual(headers["Content-Length"], str(len(body)))

    def test_missing_key(self):
        resp = request(PORT, "/")
        self.assertRejected(resp, 401, MISSING)
        self.assertIsNone(resp[1]["Retry-After"])
        self.assertIsNone(resp[1]["RateLimit"])

    def test_empty_key_is_missing(self):
        self.assertRejected(request(PORT, "/", key=""), 401, MISSING)

    def test_invalid_key(self):
        resp = request(PORT, "/", key="ms_live_thisisnotakey")
        self.assertRejected(resp, 401, INVALID)
        self.assertIsNone(resp[1]["Retry-After"])

    def test_expired_key(self):
        rec = ENV.create_key("--expires-at", "2000-01-01T00:00:00Z")
        self.assertRejected(request(PORT, "/", key=rec["key"]), 401, EXPIRED)

    def test_revoked_with_cli_refused_on_next_request(self):
        rec = ENV.create_key("--plan", "pro")
        self.assertEqual(request(PORT, "/", key=rec["key"])[0], 200)
        ENV.run_cli("key", "revoke", rec["id"])
        self.assertRejected(request(PORT, "/", key=rec["key"]), 401, REVOKED)

    def test_ok(self):
        rec = ENV.create_key("--plan", "pro", "--quota", "50/day", "--rate", "1000/s")
        code, headers, data = request(PORT, "/", key=rec["key"])
        self.assertEqual(code, 200)
        self.assertEqual(data, ("ok %s pro\n" % rec["id"]).encode())
        self.assertIsNone(headers["Retry-After"])

    def test_quota_exceeded(self):
        rec = ENV.create_key("--quota", "3/day", "--rate", "1000/s")
        conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
        try:
            for _ in range(3):
                self.assertEqual(request(PORT, "/", key=rec["key"], conn=conn)[0], 200)
            before = time.time()
            resp = request(PORT, "/", key=rec["key"], conn=conn)
        finally:
            conn.close()
        self.assertRejected(resp, 429, QUOTA)
        h = resp[1]
        # Retry-After: whole seconds to the end of the UTC day, rounded up
        expect = (next_utc_midnight_ms(before) - before * 1000) / 1000
        self.assertAlmostEqual(int(h["Retry-After"]), math.ceil(expect), delta=2)
        self.assertEqual(h["RateLimit-Policy"], '"quota";q=3;w=86400, "rate";q=1000;w=1')
        m = re.fullmatch(r'"quota";r=0;t=(\d+), "rate";r=(\d+);t=(\d+)', h["RateLimit"])
        self.assertIsNotNone(m, h["RateLimit"])
        self.assertAlmostEqual(int(m.group(1)), int(h["Retry-After"]), delta=1)
        self.assertGreaterEqual(int(m.group(2)), 0)

    def test_rate_limited(self):
        rec = ENV.create_key("--no-quota", "--rate", "2/min")
        conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
        try:
            for _ in range(2):
                self.assertEqual(request(PORT, "/", key=rec["key"], conn=conn)[0], 200)
            resp = request(PORT, "/", key=rec["key"], conn=conn)
        finally:
            conn.close()
        self.assertRejected(resp, 429, RATE)
        h = resp[1]
        # GCRA at 2/min: one request every 30 s once the burst of 2 is spent
        self.assertIn(int(h["Retry-After"]), (29, 30))
        self.assertEqual(h["RateLimit-Policy"], '"rate";q=2;w=60')
        m = re.fullmatch(r'"rate";r=0;t=(\d+)', h["RateLimit"])
        self.assertIsNotNone(m, h["RateLimit"])
        self.assertIn(int(m.group(1)), (59, 60))

    def test_head_and_post_are_rejected_and_connection_kept(self):
        conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
        try:
            code, headers, data = request(PORT, "/", method="HEAD", conn=conn)
            self.assertEqual((code, data), (401, b""))
            self.assertEqual(headers["Content-Type"], "application/json")
            # the request body is read and dropped; the connection stays usable
            resp = request(PORT, "/", method="POST", body=b"x" * 10000, conn=conn)
            self.assertRejected(resp, 401, MISSING)
            self.assertRejected(request(PORT, "/", key="nope-nope-nope", conn=conn), 401, INVALID)
        finally:
            conn.close()


class Locations(unittest.TestCase):
    def setUp(self):
        self.rec = ENV.create_key("--plan", "gold", "--quota", "1000/day", "--rate", "1000/s")

    def test_return_location_never_answers_without_a_decision(self):
        for path in ("/", "/anything/else", "/redirect", "/final", "/iffy", "/iffy?x=1"):
            code, _, data = request(PORT, path)
            self.assertEqual((code, data), (401, MISSING), path)
        code, _, data = request(PORT, "/redirect", key=self.rec["key"])
        self.assertEqual((code, data), (200, ("final %s\n" % self.rec["id"]).encode()))

    def test_static_content_protected(self):
        self.assertEqual(request(PORT, "/static/file.txt")[:3:2], (401, MISSING))
        self.assertEqual(request(PORT, "/static/file.txt", key=self.rec["key"])[:3:2],
                         (200, b"static content\n"))

    def test_unprotected_and_inherited(self):
        self.assertEqual(request(PORT, "/open")[:3:2], (200, b"open\n"))
        self.assertEqual(request(PORT2, "/health")[:3:2], (200, b"healthy\n"))
        self.assertEqual(request(PORT2, "/x")[:3:2], (401, MISSING))
        self.assertEqual(request(PORT2, "/x", key=self.rec["key"])[:3:2], (200, b"inherited\n"))

    def test_custom_header_name(self):
        self.assertEqual(request(PORT, "/custom", key=self.rec["key"])[:3:2], (401, MISSING))
        for name in ("Authorization-Key", "authorization-key"):
            self.assertEqual(request(PORT, "/custom", headers=[(name, self.rec["key"])])[0], 200)

    def test_repeated_key_header_is_invalid_and_not_counted(self):
        # An upstream could read another copy than the one checked: refused unchecked.
        rec = ENV.create_key("--quota", "5/day", "--rate", "1000/s")
        other = ENV.create_key("--plan", "other")
        k = rec["key"]
        for path, name, pairs in (
            ("/", "X-API-Key", [(k, k), (k, "ms_live_junk"), ("ms_live_junk", k), (k, other["key"]),
                                (k, "")]),
            ("/custom", "Authorization-Key", [(k, k), (other["key"], k)]),
        ):
            for a, b in pairs:
                for second in (name, name.lower(), name.upper()):
                    code, h, data = request(PORT, path, headers=[(name, a), (second, b)])
                    self.assertEqual((code, data), (401, INVALID), (path, name, second, a, b))
                    self.assertEqual(h["Content-Type"], "application/json")
                    self.assertEqual(h["Content-Length"], str(len(INVALID)))
                    self.assertIsNone(h["Retry-After"])
                    self.assertIsNone(h["RateLimit"])
        # nginx names "-" and "_" alike in $http_* and in FastCGI/uwsgi/SCGI params (with
        # underscores_in_headers on): an underscore spelling is the key header too, so beside
        # another copy it is a repeat, whichever comes first.
        for path, spellings in (("/seen", ("X_API_KEY", "x_api_key", "X-API_Key", "X_Api-Key")),
                                ("/custom", ("Authorization_Key", "AUTHORIZATION_KEY"))):
            name = "X-API-Key" if path == "/seen" else "Authorization-Key"
            for second in spellings:
                for lines in ([(name, k), (second, "attacker")], [(second, "attacker"), (name, k)],
                              [(second, k), (second, k)]):
                    code, h, data = request(PORT, path, headers=lines)
                    self.assertEqual((code, data), (401, INVALID), (path, lines))
                    self.assertIsNone(h["RateLimit"])
        # One copy is decided as before, with the whole quota left.
        code, h, _ = request(PORT, "/limits", key=k)
        self.assertEqual(code, 200)
        self.assertRegex(h["RateLimit"], r'^"quota";r=4;t=\d+, ')
        # A single copy spelled with underscores is the key, and the one the upstream reads.
        code, h, data = request(PORT, "/seen", headers=[("X_API_KEY", k)])
        self.assertEqual((code, data), (200, k.encode()))
        self.assertRegex(h["RateLimit"], r'^"quota";r=3;t=\d+, ')
        # One key header beside a header of another name is a single key.
        self.assertEqual(request(PORT, "/custom", headers=[("Authorization-Key", k), ("X-API-Key", k)])[0],
                         200)

    def test_internal_redirect_is_charged_once(self):
        rec = ENV.create_key("--quota", "2/day", "--rate", "1000/s")
        conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
        try:
            for _ in range(2):
                self.assertEqual(request(PORT, "/redirect", key=rec["key"], conn=conn)[0], 200)
            self.assertEqual(request(PORT, "/redirect", key=rec["key"], conn=conn)[:3:2], (429, QUOTA))
        finally:
            conn.close()


class AuthRequest(unittest.TestCase):
    """What bindings/nginx/README.md says about ms_auth and auth_request."""

    def test_ms_auth_in_the_protected_location_decides_before_auth_request(self):
        rec = ENV.create_key("--no-quota", "--rate", "1/min")
        # Refused by ms_auth: its own answer; the auth_request service (403 for all) is not asked.
        resp = request(PORT, "/also-auth-request/file.txt")
        self.assertEqual(resp[:3:2], (401, MISSING))
        self.assertEqual(resp[1]["Content-Type"], "application/json")
        # Admitted by ms_auth: then the auth_request service decides.
        self.assertEqual(request(PORT, "/also-auth-request/file.txt", key=rec["key"])[0], 403)
        code, h, data = request(PORT, "/allowed-by-other-auth/file.txt", key=rec["key"])
        self.assertEqual((code, data), (429, RATE))
        self.assertIn(int(h["Retry-After"]), (59, 60))
        self.assertEqual(h["RateLimit-Policy"], '"rate";q=1;w=60')

    def test_ms_auth_behind_auth_request_loses_its_answers(self):
        # nginx's auth_request passes on a 401 or 403 without body or fields and makes any other
        # refusal a 500: the README says not to use ms_auth this way.
        rec = ENV.create_key("--no-quota", "--rate", "1/min")
        code, h, data = request(PORT, "/behind-auth-request/file.txt")
        self.assertEqual(code, 401)
        self.assertNotEqual(data, MISSING)
        self.assertNotEqual(h["Content-Type"], "application/json")
        self.assertEqual(request(PORT, "/behind-auth-request/file.txt", key=rec["key"])[:3:2],
                         (200, b"static content\n"))
        code, h, _ = request(PORT, "/behind-auth-request/file.txt", key=rec["key"])
        self.assertEqual(code, 500)
        self.assertIsNone(h["Retry-After"])
        self.assertIsNone(h["RateLimit"])


class Variables(unittest.TestCase):
    def test_variables_reach_upstream(self):
        rec = ENV.create_key("--plan", "enterprise")
        code, _, data = request(PORT, "/up", key=rec["key"])
        self.assertEqual((code, data), (200, ("%s|enterprise|ok" % rec["id"]).encode()))

    def test_variables_logged(self):
        rec = ENV.create_key("--plan", "logged")
        request(PORT, "/logged-ok", key=rec["key"])
        request(PORT, "/logged-missing")
        request(PORT, "/logged-invalid", key="ms_live_invalid")
        # nginx writes the access log after the response is sent: wait for the last line.
        deadline = time.monotonic() + 5
        while True:
            with open(MAIN.access_log) as f:
                log = f.read()
            if "/logged-invalid " in log or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        self.assertIn("/logged-ok 200 key=%s plan=logged status=ok" % rec["id"], log)
        self.assertIn("/logged-missing 401 key=- plan=- status=api_key_missing", log)
        self.assertIn("/logged-invalid 401 key=- plan=- status=api_key_invalid", log)

    def test_ratelimit_fields_and_variables_for_admitted_requests(self):
        # Admitted responses carry the fields, as the Go and Python hosts' do; the variables hold
        # the same values (for logs).
        rec = ENV.create_key("--quota", "10/day", "--rate", "5/s")
        code, h, data = request(PORT, "/limits", key=rec["key"])
        self.assertEqual(code, 200)
        self.assertEqual(h["RateLimit-Policy"], '"quota";q=10;w=86400, "rate";q=5;w=1')
        self.assertRegex(h["RateLimit"], r'^"quota";r=9;t=\d+, "rate";r=4;t=[01]$')
        self.assertIsNone(h["Retry-After"])
        self.assertEqual(data.decode(), "%s|%s" % (h["RateLimit-Policy"], h["RateLimit"]))
        # Proxied answers get them too, once.
        code, h, _ = request(PORT, "/up", key=rec["key"])
        self.assertEqual(code, 200)
        self.assertEqual(h.get_all("RateLimit-Policy"), ['"quota";q=10;w=86400, "rate";q=5;w=1'])


class CrossWorker(unittest.TestCase):
    def test_quota_exact_across_workers_under_concurrency(self):
        # Needs the library's counters shared between processes (issue 3).
        rec = ENV.create_key("--quota", "50/day", "--rate", "1000/s")
        results, pids, lock = [], set(), threading.Lock()

        def one():
            # a new connection each time, so the kernel spreads them over workers
            code, h, data = request(PORT, "/", key=rec["key"], headers=[("Connection", "close")])
            with lock:
                results.append((code, data))
                pids.add(h["X-Worker"])

        pending = list(range(200))
        threads = []
        for _ in range(40):
            def loop():
                while True:
                    with lock:
                        if not pending:
                            return
                        pending.pop()
                    one()
            t = threading.Thread(target=loop)
            t.start()
            threads.append(t)
        for t in threads:
            t.join(120)
        self.assertEqual(len(results), 200)
        self.assertEqual(len(pids), 2, "both workers must have answered: %s" % pids)
        ok = sum(1 for c, _ in results if c == 200)
        over = [d for c, d in results if c == 429]
        self.assertEqual((ok, len(over)), (50, 150))
        self.assertTrue(all(d == QUOTA for d in over))


class Config(unittest.TestCase):
    """nginx -t on good and bad configurations."""

    def t(self, body, name):
        path = os.path.join(MAIN.dir, name + ".conf")
        MAIN.write_conf(body, path)
        return MAIN.cmd("-t", conf=path)

    def server(self, inner=""):
        return "server { listen 127.0.0.1:%d; location / { %s return 200; } }" % (free_port(), inner)

    def test_good_config(self):
        p = self.t("ms_auth_store %s;\n%s" % (ENV.store, self.server("ms_auth on;")), "good")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("test is successful", p.stderr)

    def assertBad(self, body, *needles):
        p = self.t(body, "bad")
        self.assertNotEqual(p.returncode, 0, p.stderr)
        for n in needles:
            self.assertIn(n, p.stderr)
        return p.stderr

    def test_on_without_store(self):
        err = self.assertBad(self.server("ms_auth on;"), '"ms_auth on" in', '"ms_auth_store"')
        self.assertIn("bad.conf:", err)

    def test_store_missing(self):
        path = os.path.join(ENV.store_dir, "no-such.db")
        self.assertBad("ms_auth_store %s;\n%s" % (path, self.server("ms_auth on;")),
                       '"ms_auth_store"', path)
        self.assertFalse(os.path.exists(path), "nginx -t must not create a store")

    def test_store_in_missing_directory(self):
        path = "/nonexistent-dir/keys.db"
        self.assertBad("ms_auth_store %s;\n%s" % (path, self.server()), '"ms_auth_store"', path)

    def test_store_not_a_database(self):
        path = os.path.join(ENV.store_dir, "garbage.db")
        with open(path, "wb") as f:
            f.write(b"this is not a SQLite database at all" * 100)
        os.chown(path, pwd.getpwnam(WORKER_USER).pw_uid, -1)
        self.assertBad("ms_auth_store %s;\n%s" % (path, self.server()), '"ms_auth_store"', "cannot open")

    def test_store_the_workers_cannot_open(self):
        # readable by root (the master) only: the workers would fail at run time
        d = tempfile.mkdtemp(prefix="ms-auth-root-", dir=ENV.tmp)
        os.chmod(d, 0o700)
        path = os.path.join(d, "keys.db")
        p = subprocess.run([ENV.cli, "--db", path, "key", "create", "--json"], capture_output=True)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertBad("ms_auth_store %s;\n%s" % (path, self.server()),
                       '"ms_auth_store"', 'worker user "%s"' % WORKER_USER)

    def test_bad_values(self):
        store = "ms_auth_store %s;\n" % ENV.store
        self.assertBad(store + self.server("ms_auth maybe;"), '"ms_auth"')
        self.assertBad(store + self.server("ms_auth_failure sometimes;"), '"ms_auth_failure"')
        self.assertBad(store + self.server('ms_auth_header "X Key";'), '"ms_auth_header"')
        self.assertBad(store + store + self.server(), '"ms_auth_store" directive is duplicate')
        self.assertBad("server { listen 127.0.0.1:%d; ms_auth_store %s; }" % (free_port(), ENV.store),
                       '"ms_auth_store" directive is not allowed here')


class Reload(unittest.TestCase):
    def reload(self, extra=""):
        """Rewrites the main config, reloads, waits for the new workers."""
        old = MAIN.worker_pids()
        MAIN.write_conf(main_http_body(PORT, PORT2, ENV.store, extra))
        p = MAIN.cmd("-s", "reload")
        self.assertEqual(p.returncode, 0, p.stderr)
        deadline = time.time() + 15
        while time.time() < deadline:
            now = MAIN.worker_pids()
            if len(now) == MAIN.workers and not (now & old):
                return
            time.sleep(0.05)
        self.fail("the workers were not replaced: %s -> %s" % (old, MAIN.worker_pids()))

    def test_reload_keeps_working(self):
        rec = ENV.create_key("--plan", "reload")
        self.assertEqual(request(PORT, "/", key=rec["key"])[0], 200)
        self.reload('location = /reloaded { ms_auth on; return 200 "reloaded $ms_auth_plan\\n"; }')
        self.assertEqual(request(PORT, "/reloaded")[:3:2], (401, MISSING))
        self.assertEqual(request(PORT, "/reloaded", key=rec["key"])[:3:2], (200, b"reloaded reload\n"))
        self.assertEqual(request(PORT, "/", key=rec["key"])[0], 200)
        self.assertEqual(request(PORT, "/", key="ms_live_nope")[:3:2], (401, INVALID))

    def test_reload_keeps_counts(self):
        # Needs the library's counters shared between processes (issue 3): the
        # new workers start before the old ones have written their counts.
        rec = ENV.create_key("--quota", "2/day", "--rate", "1000/s")
        self.assertEqual(request(PORT, "/", key=rec["key"])[0], 200)
        self.reload()
        self.assertEqual(request(PORT, "/", key=rec["key"])[0], 200)
        self.assertEqual(request(PORT, "/", key=rec["key"])[:3:2], (429, QUOTA))

    def test_bad_reload_is_refused_and_nginx_keeps_answering(self):
        rec = ENV.create_key("--plan", "stays")
        pids = MAIN.worker_pids()
        bad = "/nonexistent-dir/keys.db"
        MAIN.write_conf(main_http_body(PORT, PORT2, bad))
        try:
            # "nginx -s reload" reads the config first and refuses to signal
            p = MAIN.cmd("-s", "reload")
            self.assertNotEqual(p.returncode, 0)
            self.assertIn('"ms_auth_store"', p.stderr)
            self.assertIn(bad, p.stderr)
            # a bare SIGHUP reaches the master, which keeps its running config
            size = os.path.getsize(MAIN.error_log)
            os.kill(MAIN.master, signal.SIGHUP)
            deadline = time.time() + 10
            while time.time() < deadline and bad not in MAIN.error_log_text()[size:]:
                time.sleep(0.05)
            self.assertIn(bad, MAIN.error_log_text()[size:])
            self.assertEqual(MAIN.worker_pids(), pids)
            self.assertEqual(request(PORT, "/", key=rec["key"])[:3:2],
                             (200, ("ok %s stays\n" % rec["id"]).encode()))
            self.assertEqual(request(PORT, "/")[:3:2], (401, MISSING))
        finally:
            MAIN.write_conf(main_http_body(PORT, PORT2, ENV.store))


class Failure(unittest.TestCase):
    """A store the worker cannot open: closed answers 503 JSON, open lets through."""

    def test_failure_closed_and_open(self):
        d = ENV.make_store_dir("failing")
        store = os.path.join(d, "keys.db")
        rec = ENV.create_key("--plan", "f", store=store)
        port = free_port()
        n = Nginx(ENV, "failure", """
    ms_auth_store %s;
    server {
        listen 127.0.0.1:%d;
        location / { ms_auth on; return 200 "ok:$ms_auth_status\\n"; }
        location /failopen { ms_auth on; ms_auth_failure open; return 200 "open:$ms_auth_status\\n"; }
    }""" % (store, port), workers=1)
        n.start()
        try:
            self.assertEqual(request(port, "/", key=rec["key"])[:3:2], (200, b"ok:ok\n"))
            # Take the store away from the worker user, then make the master start
            # a new worker: its open fails.
            os.chmod(d, 0)
            (old,) = n.worker_pids()
            os.kill(old, signal.SIGQUIT)
            deadline = time.time() + 10
            while time.time() < deadline and (not n.worker_pids() or old in n.worker_pids()):
                time.sleep(0.05)
            code, h, data = request(port, "/", key=rec["key"])
            self.assertEqual(code, 503, data)
            self.assertEqual(h["Content-Type"], "application/json")
            doc = json.loads(data)
            self.assertEqual(doc["success"], False)
            self.assertEqual(doc["error"]["httpStatus"], 503)
            self.assertIn(doc["error"]["code"], ("store_unavailable", "store_not_open"))
            code, _, data = request(port, "/failopen", key=rec["key"])
            self.assertEqual(code, 200)
            self.assertIn(data, (b"open:store_unavailable\n", b"open:store_not_open\n"))
            self.assertIn("ms_auth: cannot open store", n.error_log_text())
            # the worker retries on its own once the store is back
            os.chmod(d, 0o755)
            time.sleep(1.2)
            self.assertEqual(request(port, "/", key=rec["key"])[:3:2], (200, b"ok:ok\n"))
        finally:
            os.chmod(d, 0o755)
            n.stop()


def main():
    if os.geteuid() != 0:
        sys.exit("run as root: nginx's master starts its workers as user %s" % WORKER_USER)
    for path in (MODULE, os.path.join(LIB_DIR, "ms-auth")):
        if not os.path.exists(path):
            sys.exit("missing %s" % path)
    suite = unittest.defaultTestLoader.loadTestsFromModule(sys.modules[__name__])
    result = unittest.TextTestRunner(verbosity=2, stream=sys.stdout).run(suite)
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    passed = result.testsRun - failed - len(result.skipped)
    print("%d passed, %d failed" % (passed, failed))
    sys.exit(0 if failed == 0 and passed > 0 else 1)


if __name__ == "__main__":
    main()
