#!/usr/bin/env bash
# Runs every test of the nginx module against a real nginx (as root):
#   bash bindings/nginx/test.sh        (from the repository root, after cargo build --release)
# MS_AUTH_TARGET_DIR: where libms_auth.a and the ms-auth CLI are (default <repo>/target/release).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
LIB_DIR=$(realpath -m "${MS_AUTH_TARGET_DIR:-$REPO/target/release}")

# shellcheck source=lib.sh
. "$HERE/lib.sh"

[ "$(id -u)" -eq 0 ] || { say "run as root: nginx's master starts its workers as another user"; exit 1; }

# ps (procps) finds the worker pids; the tests are Python 3 standard library only.
ensure_packages nginx nginx-dev python3 procps binutils

bash "$HERE/build.sh"

[ -x "$LIB_DIR/ms-auth" ] || { say "no $LIB_DIR/ms-auth: run 'cargo build --release' first"; exit 1; }

cd "$REPO"
MS_AUTH_REPO=$REPO MS_AUTH_TARGET_DIR=$LIB_DIR exec python3 "$HERE/tests/test_nginx_module.py"
