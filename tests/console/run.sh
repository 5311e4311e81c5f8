#!/usr/bin/env bash
# The console in a real browser: Debian's chromium and chromium-driver (installed here when missing),
# driven headless by Selenium from a venv under target/, against `ms-auth console` on 127.0.0.1.
# Screenshots of the main pages go to target/console-screenshots/. Run after `cargo build --release`.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"

need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
command -v python3 >/dev/null 2>&1 || need+=(python3)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
if [ "${#need[@]}" -gt 0 ]; then
    echo "console tests: installing ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    (apt-get install -y -qq "${need[@]}" || (apt-get update -qq && apt-get install -y -qq "${need[@]}")) >/dev/null
fi
chromium --version

VENV="$REPO/target/console-venv"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import selenium' >/dev/null 2>&1; then
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check 'selenium>=4.20,<5'
fi
for f in target/release/ms-auth target/release/libms_auth.so; do
    [ -f "$f" ] || { echo "console tests: $f not found; run 'cargo build --release' first" >&2; exit 1; }
done
# Selenium must use Debian's driver and browser, never fetch its own.
export SE_OFFLINE=true
PYTHONDONTWRITEBYTECODE=1 "$VENV/bin/python" tests/console/browser_test.py
