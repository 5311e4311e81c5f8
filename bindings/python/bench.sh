#!/usr/bin/env bash
# Checks per second from one Python thread on a hot valid key (see bench.py --help).
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/env.sh"
"$PY" "$HERE/bench.py" "$@"
