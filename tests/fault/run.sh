#!/usr/bin/env bash
# Fault injection with libfiu (Debian's fiu-utils and libfiu-dev, installed here if missing): a process
# checks one key with a quota while writes, syncs and opens fail at random. Asserts that every check
# answers a decision (never MS_ERR_STORE), that the failures were seen (ms_auth_flush_failures_total),
# and afterwards that the database passes integrity_check and the quota was neither exceeded nor lost.
# Needs `cargo build --release` first (scripts/test.sh does it).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
lib=$root/target/release
cli=$lib/ms-auth
if ! command -v fiu-run >/dev/null || [ ! -f /usr/include/fiu-control.h ]; then
    (apt-get install -y -qq fiu-utils libfiu-dev || (apt-get update -qq && apt-get install -y -qq fiu-utils libfiu-dev)) >/dev/null
fi
out=$root/target/fault-tests
mkdir -p "$out"
gcc -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -pedantic -I"$root/include" \
    "$root/tests/fault/check_under_faults.c" "$lib/libms_auth.a" -lfiu -lpthread -ldl -lm -o "$out/check_under_faults"

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
db=$dir/keys.db
created=$("$cli" --db "$db" key create --quota 300/day --no-rate-limit --no-expiry --json)
key=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["key"])' "$created")
id=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["id"])' "$created")

passed=0
failed=0
check() { # name, condition...
    local name=$1
    shift
    if "$@"; then passed=$((passed + 1)); echo "ok   $name"; else failed=$((failed + 1)); echo "FAIL $name"; fi
}

result=$(fiu-run -x "$out/check_under_faults" "$db" "$key" 5000 0.2)
echo "    $result"
eval "${result// /; }"
check "every check under injected I/O failures answered a decision" [ "$errors" = 0 ]
check "the quota admitted exactly its limit" [ "$admitted" = 300 ]
check "injected failures reached the flush turns" [ "$flush_failures" -gt 0 ]
used=$("$cli" --db "$db" key show "$id" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["usage"]["used"])')
check "the database has every admitted count once the faults stop" [ "$used" = 300 ]
integrity=$(python3 -c 'import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute("PRAGMA integrity_check").fetchone()[0])' "$db")
check "the database passes integrity_check" [ "$integrity" = ok ]
echo "fault: $passed passed, $failed failed"
[ "$failed" = 0 ]
