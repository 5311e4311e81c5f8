#!/usr/bin/env bash
# The same requests through nginx, the Python WSGI (wsgiref) and ASGI (uvicorn) middlewares and the Go
# middleware must get the same answer (status, body, Content-Type, Retry-After, RateLimit-Policy,
# RateLimit), also to a library failure: tests/cross_host/cross_host.py.
# As root, after `cargo build --release`; it uses what the binding scripts install (scripts/test.sh runs
# them first): the Python venv under target/ (bindings/python/env.sh makes it if missing), Go
# (bindings/go/env.sh), nginx and its module (bindings/nginx/build.sh, a no-op when up to date).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"

bash "$REPO/bindings/nginx/build.sh"

# Go: the host program, built against this checkout's library.
HERE="$REPO/bindings/go"
# shellcheck source=../bindings/go/env.sh
. "$HERE/env.sh"
mkdir -p "$REPO/target/cross-host"
(cd "$REPO/tests/cross_host/goserver" && go build -o "$REPO/target/cross-host/goserver" .)

# Python: the venv of bindings/python, with ms_auth installed from this checkout.
# shellcheck source=../bindings/python/env.sh
. "$REPO/bindings/python/env.sh"
cd "$REPO"
MS_AUTH_REPO="$REPO" PYTHONDONTWRITEBYTECODE=1 exec "$PY" "$REPO/tests/cross_host/cross_host.py"
