#!/usr/bin/env bash
# Every test of the Python binding: mypy --strict, then pytest (unit, loader, threads, and real
# wsgiref/uvicorn servers on loopback). Run from anywhere after `cargo build --release`.
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/env.sh"

echo "== mypy --strict"
(cd "$HERE" && "$PY" -m mypy --strict --cache-dir "$REPO/target/py-mypy-cache" \
    src/ms_auth tests bench.py)
echo "== pytest"
cd "$HERE"
PYTHONDONTWRITEBYTECODE=1 "$PY" -m pytest -q -p no:cacheprovider tests
