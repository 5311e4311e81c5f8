#!/usr/bin/env bash
# Builds the release artifacts (packaging/build.sh), then installs each into a clean temporary place,
# away from the repository and with no cargo on PATH, and uses it as its ecosystem's users would:
#   make install PREFIX=...   files, soname, pkg-config, a C program linked through pkg-config
#   tarball                   unpacked anywhere: the CLI, a C program static and shared via ${pcfiledir}
#   .deb                      dpkg-deb --info/--contents, lintian, dpkg -x, the CLI and the library from it,
#                             and the nginx module package loaded into Debian's nginx (401 without a key,
#                             200 with one); no dpkg -i, so it needs no change to the system
#   wheel                     auditwheel confirms its manylinux tag; pip install into a fresh venv, then a
#                             check and the WSGI middleware
#   Go module                 a consumer module with a replace directive, GOFLAGS=-mod=mod GOPROXY=off,
#                             go build with no CGO_* variables, the binary run
# Ends with "distribution: N passed, 0 failed". Installs what it needs (apt, pip into a venv) itself.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION="$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$REPO/Cargo.toml" | head -n1)"
DIST="$REPO/target/dist"

need=()
command -v nginx >/dev/null || need+=(nginx)
command -v curl >/dev/null || need+=(curl)
command -v go >/dev/null || need+=(golang-go)
command -v gcc >/dev/null || need+=(gcc libc6-dev)
command -v pkg-config >/dev/null || need+=(pkg-config)
command -v lintian >/dev/null || need+=(lintian)
# The wheel is installed with the system's Python (the clean PATH below has no pyenv or other).
/usr/bin/python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3 python3-venv)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi

# MS_AUTH_DIST_REUSE=1 tests the artifacts of an earlier build.sh run as they are (while editing this file).
[ -n "${MS_AUTH_DIST_REUSE:-}" ] || bash "$REPO/packaging/build.sh"

# Everything below runs in $WORK, outside the repository, with a PATH that has no cargo or rustc
# (the system's directories only), so an install that secretly needs the toolchain or the tree fails.
WORK="$(mktemp -d /tmp/ms-auth-dist.XXXXXX)"
NGINX_PID=""
cleanup() {
    [ -n "$NGINX_PID" ] && kill "$NGINX_PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
CLEAN_PATH=/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin
clean() { env -i HOME="$HOME" PATH="$CLEAN_PATH" LANG=C.UTF-8 "$@"; }
clean sh -c 'command -v cargo rustc' && { echo "FAIL: the clean PATH still has cargo" >&2; exit 1; }

# has PATTERN CMD...: CMD's output matches. Not `CMD | grep -q`: grep -q stops reading at the first match,
# and under pipefail the writer's SIGPIPE would fail the pipeline.
has() { local pattern="$1" out; shift; out="$("$@")"; grep -q -- "$pattern" <<<"$out"; }

passed=0
pass() { passed=$((passed + 1)); echo "PASS: $*"; }
fail() { echo "FAIL: $*" >&2; echo "distribution: $passed passed, 1 failed"; exit 1; }

# The C program every C install is tried with: the README's example (decides one request).
cp "$REPO/tests/c/example.c" "$WORK/app.c"

# uses_cli BIN: a store made, a key created and checked by the installed CLI.
uses_cli() {
    local bin="$1" db="$WORK/cli-$RANDOM.db" key
    key="$(clean "$bin" --db "$db" key create --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')"
    clean "$bin" --db "$db" check "$key" >/dev/null || fail "$bin check of a fresh key"
    echo "$db $key"
}
# runs_app APP DB KEY [env...]: the C example answers 200 for the key, 401 without one.
runs_app() {
    local app="$1" db="$2" key="$3"; shift 3
    local out
    out="$(clean "$@" "$app" "$db" "$key")"
    [[ "$out" == "200 "* ]] || fail "$app with a valid key answered: $out"
    out="$(clean "$@" "$app" "$db")"
    [[ "$out" == '401 {"success":false,"error":{"code":"api_key_missing"'* ]] || fail "$app without a key answered: $out"
}

echo "== make install PREFIX=..."
PREFIX="$WORK/prefix"
make -C "$REPO" --no-print-directory -s install PREFIX="$PREFIX"
for f in bin/ms-auth include/ms_auth.h lib/libms_auth.a "lib/libms_auth.so.$VERSION" lib/libms_auth.so.1 \
         lib/libms_auth.so lib/pkgconfig/ms_auth.pc; do
    [ -e "$PREFIX/$f" ] || fail "make install did not install $f"
done
soname="$(readelf -d "$PREFIX/lib/libms_auth.so.$VERSION" | sed -n 's/.*SONAME.*\[\(.*\)\]/\1/p')"
[ "$soname" = libms_auth.so.1 ] || fail "soname is '$soname', not libms_auth.so.1"
pc() { clean env PKG_CONFIG_PATH="$1" pkg-config "${@:2}" ms_auth; }
[ "$(pc "$PREFIX/lib/pkgconfig" --modversion)" = "$VERSION" ] || fail "pkg-config --modversion"
cli_out="$(uses_cli "$PREFIX/bin/ms-auth")"
read -r db key <<<"$cli_out"
# shellcheck disable=SC2046 # word splitting of pkg-config's flags is meant
clean gcc -Wall -Werror -o "$WORK/app-prefix" "$WORK/app.c" $(pc "$PREFIX/lib/pkgconfig" --cflags --libs)
has 'NEEDED.*\[libms_auth.so.1\]' readelf -d "$WORK/app-prefix" || fail "app does not need libms_auth.so.1"
runs_app "$WORK/app-prefix" "$db" "$key" LD_LIBRARY_PATH="$PREFIX/lib"
make -C "$REPO" --no-print-directory -s uninstall PREFIX="$PREFIX"
left="$(find "$PREFIX" -type f -o -type l)"
[ -z "$left" ] || fail "make uninstall left: $left"
pass "make install: header, libms_auth.a, libms_auth.so.$VERSION (soname libms_auth.so.1), ms_auth.pc, ms-auth; C app via pkg-config; uninstall"

echo "== release tarball"
tarball="$DIST/ms-auth-$VERSION-x86_64-linux-gnu.tar.gz"
mkdir -p "$WORK/opt"
tar -C "$WORK/opt" -xzf "$tarball"
T="$WORK/opt/ms-auth-$VERSION-x86_64-linux-gnu"
cli_out="$(uses_cli "$T/bin/ms-auth")"
read -r db key <<<"$cli_out"
# Relocatable: pkg-config answers paths inside wherever the tree was unpacked.
[ "$(pc "$T/lib/pkgconfig" --variable=includedir)" -ef "$T/include" ] || fail "tarball .pc includedir"
# shellcheck disable=SC2046
clean gcc -Wall -Werror -o "$WORK/app-shared" "$WORK/app.c" $(pc "$T/lib/pkgconfig" --cflags --libs)
runs_app "$WORK/app-shared" "$db" "$key" LD_LIBRARY_PATH="$T/lib"
# Static: the archive by path, then what pkg-config --static adds for it.
# shellcheck disable=SC2046
clean gcc -Wall -Werror -o "$WORK/app-static" "$WORK/app.c" $(pc "$T/lib/pkgconfig" --cflags) \
    "$T/lib/libms_auth.a" $(pc "$T/lib/pkgconfig" --static --libs-only-l | sed 's/-lms_auth//')
if has libms_auth readelf -d "$WORK/app-static"; then fail "static app needs a shared libms_auth"; fi
runs_app "$WORK/app-static" "$db" "$key"
pass "tarball ($(du -h "$tarball" | cut -f1)): CLI; C app shared and static through its relocatable ms_auth.pc"

echo "== .deb"
deb="$DIST/ms-auth_${VERSION}-1_amd64.deb"
ngxdeb="$DIST/libnginx-mod-http-ms-auth_${VERSION}-1_amd64.deb"
has "Package: ms-auth" dpkg-deb --info "$deb" || fail "dpkg-deb --info $deb"
contents="$(dpkg-deb --contents "$deb")"
for f in ./usr/bin/ms-auth ./usr/include/ms_auth.h ./usr/lib/x86_64-linux-gnu/libms_auth.a \
         ./usr/lib/x86_64-linux-gnu/libms_auth.so.1 ./usr/lib/x86_64-linux-gnu/pkgconfig/ms_auth.pc; do
    grep -q " $f" <<<"$contents" || fail "$deb lacks $f"
done
# lintian's errors fail the test; its warnings are printed (e.g. a library and its CLI in one package).
lintian --tag-display-limit 0 --suppress-tags no-manual-page "$deb" "$ngxdeb" | tee "$WORK/lintian.log" || true
if grep -q '^E: ' "$WORK/lintian.log"; then fail "lintian reports errors"; fi
D="$WORK/deb"
dpkg -x "$deb" "$D"
cli_out="$(uses_cli "$D/usr/bin/ms-auth")"
read -r db key <<<"$cli_out"
pcd="$D/usr/lib/x86_64-linux-gnu/pkgconfig"
# The .pc names /usr (where dpkg -i puts it); pkg-config's sysroot maps that into the extracted tree.
# shellcheck disable=SC2046
clean gcc -Wall -Werror -o "$WORK/app-deb" "$WORK/app.c" \
    $(clean env PKG_CONFIG_PATH="$pcd" PKG_CONFIG_SYSROOT_DIR="$D" pkg-config --cflags --libs ms_auth)
runs_app "$WORK/app-deb" "$db" "$key" LD_LIBRARY_PATH="$D/usr/lib/x86_64-linux-gnu"
# The nginx module package against Debian's own nginx binary: load_module of the extracted file.
has "$(dpkg-query -W -f='${Provides}' nginx | grep -o 'nginx-abi-[^ ,]*')" dpkg-deb -f "$ngxdeb" Depends \
    || fail "module package does not depend on this nginx's ABI"
N="$WORK/ngx"
dpkg -x "$ngxdeb" "$N"
mkdir -p "$N/run"
# A port the kernel just handed out, not a random guess: other test servers run on this machine too.
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
cat >"$N/nginx.conf" <<EOF
load_module $N/usr/lib/nginx/modules/ngx_http_ms_auth_module.so;
# The workers open the store made above by root in a 0700 directory (an install chowns it to www-data).
user root;
daemon off;
pid $N/run/nginx.pid;
error_log $N/run/error.log;
events {}
http {
    access_log off;
    client_body_temp_path $N/run; proxy_temp_path $N/run; fastcgi_temp_path $N/run;
    uwsgi_temp_path $N/run; scgi_temp_path $N/run;
    ms_auth_store $db;
    server {
        listen 127.0.0.1:$port;
        location / { ms_auth on; return 200 "hello\n"; }
    }
}
EOF
/usr/sbin/nginx -t -p "$N/run" -c "$N/nginx.conf" 2>"$WORK/nginx-t.log" || { cat "$WORK/nginx-t.log" >&2; fail "nginx -t"; }
/usr/sbin/nginx -p "$N/run" -c "$N/nginx.conf" &
NGINX_PID=$!
for _ in $(seq 100); do
    kill -0 "$NGINX_PID" 2>/dev/null || fail "nginx exited: $(tail -3 "$N/run/error.log" 2>/dev/null)"
    curl -s -o /dev/null "http://127.0.0.1:$port/" && break
    sleep 0.1
done
code="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/" || true)"
[ "$code" = 401 ] || fail "nginx without a key answered $code"
code="$(curl -s -o /dev/null -w '%{http_code}' -H "X-API-Key: $key" "http://127.0.0.1:$port/" || true)"
[ "$code" = 200 ] || fail "nginx with a key answered $code"
kill "$NGINX_PID"; wait "$NGINX_PID" 2>/dev/null || true; NGINX_PID=""
pass ".deb ($(du -h "$deb" | cut -f1)) and module .deb: contents, lintian without errors, CLI and C app from dpkg -x, module in Debian's nginx 401/200"

echo "== Python wheel"
whl="$(ls "$DIST"/ms_auth-"$VERSION"-py3-none-manylinux_2_*_x86_64.whl)"
has 'ms_auth/_lib/libms_auth.so' python3 -m zipfile -l "$whl" || fail "the wheel has no libms_auth.so"
# auditwheel (PyPI's own rules for Linux wheels) must find the library consistent with the wheel's tag:
# only system libraries a manylinux platform guarantees, no newer glibc symbols than the tag says.
plat="$(basename "$whl" .whl)"; plat="${plat##*-}"
python3 -m venv "$WORK/audit-venv"
"$WORK/audit-venv/bin/pip" install -q --disable-pip-version-check "auditwheel>=6"
has "consistent with the following platform tag: \"$plat\"" sh -c '"$1" show "$2" 2>&1 | tr -s "\n " "  "' - \
    "$WORK/audit-venv/bin/auditwheel" "$whl" || fail "auditwheel does not confirm $plat for $(basename "$whl")"
clean python3 -m venv "$WORK/venv"
clean "$WORK/venv/bin/pip" install -q --disable-pip-version-check --no-index "$whl"
mkdir -p "$WORK/pyapp"
cat >"$WORK/pyapp/app.py" <<'EOF'
"""A user's program after `pip install ms_auth-...whl`: a check, then the WSGI middleware."""
import io
import sys
from pathlib import Path
from wsgiref.util import setup_testing_defaults

import ms_auth
from ms_auth import Store
from ms_auth.wsgi import ApiKeyMiddleware

store = Store(sys.argv[1])
created = store.create_key(plan="pro", rate_limit=(60, 60_000))
assert store.check(created.key).http_status == 200
assert store.check("ms_live_nope").http_status == 401


def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello " + environ["ms_auth.key_id"].encode()]


app = ApiKeyMiddleware(hello, store)


def call(key):
    environ = {}
    setup_testing_defaults(environ)
    environ["wsgi.input"] = io.BytesIO()
    if key is not None:
        environ["HTTP_X_API_KEY"] = key
    got = {}
    body = b"".join(app(environ, lambda status, headers, exc=None: got.update(status=status, headers=headers)))
    return got["status"], dict(got["headers"]), body


status, headers, body = call(created.key)
assert status.startswith("200"), status
assert body == b"hello " + created.id.encode(), body
assert "RateLimit" in headers, headers
status, _, body = call(None)
assert status.startswith("401") and b"api_key_missing" in body, (status, body)
# The library came from the wheel, not from a build tree.
assert (Path(ms_auth.__file__).parent / "_lib" / "libms_auth.so").is_file()
print("python ok", created.id)
EOF
has '^python ok' sh -c 'cd "$1" && shift && exec "$@"' - "$WORK/pyapp" env -i HOME="$HOME" PATH="$CLEAN_PATH" LANG=C.UTF-8 "$WORK/venv/bin/python" app.py "$WORK/py.db" || fail "python app"
pass "wheel $(basename "$whl") ($(du -h "$whl" | cut -f1)): auditwheel confirms its tag; pip install in a fresh venv; check and WSGI middleware"

echo "== Go module"
mkdir -p "$WORK/gomod" "$WORK/goapp"
tar -C "$WORK/gomod" -xzf "$DIST/ms-auth-go-$VERSION.tar.gz"
cat >"$WORK/goapp/go.mod" <<EOF
module example.com/goapp

go 1.19

require github.com/ms-auth/ms-auth/bindings/go v$VERSION

replace github.com/ms-auth/ms-auth/bindings/go => $WORK/gomod/ms-auth-go-$VERSION
EOF
cat >"$WORK/goapp/main.go" <<'EOF'
// A user's program built from the release's Go module alone: a check, then the middleware.
package main

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"

	"github.com/ms-auth/ms-auth/bindings/go/msauth"
)

func main() {
	store, err := msauth.Open(os.Args[1])
	if err != nil {
		panic(err)
	}
	defer store.Close()
	created, err := store.CreateKey(msauth.KeySpec{Plan: "pro"})
	if err != nil {
		panic(err)
	}
	if r := store.CheckNow(created.Key); !r.OK() {
		panic(r.Status)
	}
	api := msauth.Middleware(store)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, _ := msauth.KeyIDFromContext(r.Context())
		fmt.Fprint(w, "hello ", id)
	}))
	for _, key := range []string{created.Key, ""} {
		req := httptest.NewRequest(http.MethodGet, "/", nil)
		if key != "" {
			req.Header.Set("X-API-Key", key)
		}
		w := httptest.NewRecorder()
		api.ServeHTTP(w, req)
		fmt.Println(w.Code, w.Body.String())
	}
}
EOF
# HOME's Go caches are the only state used; GOFLAGS/GOPROXY as a user without network would set them.
(cd "$WORK/goapp" && clean GOFLAGS=-mod=mod GOPROXY=off go build -o "$WORK/goapp/goapp" .) \
    || fail "go build of the consumer module"
if has libms_auth ldd "$WORK/goapp/goapp"; then fail "the Go program needs a shared libms_auth"; fi
out="$(clean "$WORK/goapp/goapp" "$WORK/go.db")"
grep -q '^200 hello ' <<<"$out" || fail "Go program with a key: $out"
grep -q '^401 {"success":false,"error":{"code":"api_key_missing"' <<<"$out" || fail "Go program without a key: $out"
pass "Go module ($(du -h "$DIST/ms-auth-go-$VERSION.tar.gz" | cut -f1)): go build through replace, offline, no cgo variables; static; 200/401"

echo "distribution: $passed passed, 0 failed"
