#!/usr/bin/env bash
# Soak: mixed load on one store for N minutes (default 30), then the invariants.
#   bash scripts/soak.sh [minutes] [keys]        (CI: `bash scripts/soak.sh 1 10000`)
# Load: 8 checking processes over `keys` keys (default 100000; some with flush intervals of 0 and 100 ms,
# some with the default 1 s), one admin process creating, revoking and rotating keys, changing a plan that
# a quarter of the keys follow and reading usage (which flushes), so the counters file grows; a kill -9 of
# a random process (worker or admin) every 2-5 s, restarted at once. Worker 0 is never killed: it is the
# probe for leaks (anonymous RSS, open descriptors, mappings: sampled after the first tenth of the run and at
# the end).
# Invariants (tests/soak/soak.c verify): every admission a worker saw is counted, and the counts exceed
# the admissions seen by at most one per kill (the one in flight); no quota admitted past its limit; every
# admin change logged after MS_OK is in the store, rotations whole; no check ever answered an error; the
# probe's anonymous RSS grew by at most 8 MiB, its descriptors and mappings not at all (beyond 4, for a counters file
# being replaced at the sampling instant).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
minutes=${1:-30}
keys=${2:-100000}
workers=8
cd "$root"
cargo build --release --quiet
dir=$(mktemp -d)
# The program lives with this run's files, so a concurrent build cannot replace it under the run.
soak=$dir/soak
gcc -std=c11 -O2 -Wall -Wextra -Werror -I"$root/include" -I"$root/tests/c" tests/soak/soak.c target/release/libms_auth.a \
    -lpthread -ldl -lm -o "$soak"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT
db=$dir/keys.db
t0=$(($(date +%s%3N)))
start=$(date +%s)
"$soak" setup "$db" "$dir" "$keys" "$t0"
echo "soak: $keys keys created in $(($(date +%s) - start)) s; running ${minutes} min"
counters=$(ls "$dir"/*.db-counters* 2>/dev/null | head -1 || true)
size0=$(stat -c %s "$counters" 2>/dev/null || echo 0)

start_worker() { "$soak" worker "$db" "$dir" "$1" "$t0" >>"$dir/waits" 2>>"$dir/errors" & pids[$1]=$!; }
start_admin() { "$soak" admin "$db" "$dir" "$t0" >>"$dir/waits" 2>>"$dir/errors" & pids[$workers]=$!; }
started=$(date +%s) # the load's start: the run lasts `minutes` from here, the first sample a tenth in
for ((w = 0; w < workers; w++)); do start_worker "$w"; done
start_admin

probe() { # pid -> "anon_rss_kb fds maps" (anonymous RSS: the counters mapping's pages are file pages)
    echo "$(awk '/RssAnon/ {print $2}' "/proc/$1/status") $(ls "/proc/$1/fd" | wc -l) $(wc -l <"/proc/$1/maps")"
}
end=$((started + minutes * 60))
sample_at=$((started + minutes * 6 + 5))
first=""
kills=0
restarts_died=0
while [ "$(date +%s)" -lt "$end" ]; do
    sleep "$((2 + RANDOM % 4))"
    if [ -z "$first" ] && [ "$(date +%s)" -ge "$sample_at" ]; then first=$(probe "${pids[0]}"); fi
    # Any process that exited by itself failed (workers and the admin loop until killed).
    for ((i = 0; i <= workers; i++)); do
        if ! kill -0 "${pids[$i]}" 2>/dev/null; then
            echo "soak: process $i exited by itself" >&2
            cat "$dir/errors" >&2
            exit 1
        fi
    done
    victim=$((1 + RANDOM % workers)) # 1..8: a worker 1..7 or the admin (8)
    kill -9 "${pids[$victim]}"
    wait "${pids[$victim]}" 2>/dev/null || true
    kills=$((kills + 1))
    if [ "$victim" = "$workers" ]; then start_admin; else start_worker "$victim"; fi
done
[ -n "$first" ] || first=$(probe "${pids[0]}")
last=$(probe "${pids[0]}")
for ((i = 0; i <= workers; i++)); do kill -9 "${pids[$i]}" 2>/dev/null || true; done
wait 2>/dev/null || true
pids=()
counters=$(ls "$dir"/*.db-counters* 2>/dev/null | head -1 || true)
size1=$(stat -c %s "$counters" 2>/dev/null || echo 0)

result=$("$soak" verify "$db" "$dir" "$kills" "$t0") || { echo "$result"; cat "$dir/errors"; exit 1; }
read -r rss0 fd0 maps0 <<<"$first"
read -r rss1 fd1 maps1 <<<"$last"
integrity=$(python3 -c 'import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute("PRAGMA integrity_check").fetchone()[0])' "$db")
echo "soak: ${minutes} min, kills=$kills $result"
touch "$dir/waits"
echo "soak: calls that waited past the busy timeout (then retried): opens $(grep -c "^open" "$dir/waits" || true), admin $(grep -c "^admin" "$dir/waits" || true)"
if [ -s "$dir/probe.log" ]; then
    # About ten samples of the probe's memory over the run, to tell held memory from memory the allocator keeps.
    every=$(($(wc -l <"$dir/probe.log") / 10 + 1))
    echo "soak: probe memory (s, KiB: anonymous RSS, heap in use, heap free, mmapped):"
    awk -v every="$every" '(NR - 1) % every == 0 {printf "  %s\n", $0}' "$dir/probe.log"
    echo "  $(tail -1 "$dir/probe.log") (last)"
fi
echo "soak: counters file $size0 -> $size1 bytes; probe anonymous RSS ${rss0} -> ${rss1} KiB, fds $fd0 -> $fd1, maps $maps0 -> $maps1; integrity $integrity"
failed=0
[ ! -s "$dir/errors" ] || { echo "FAIL checks answered errors:"; head "$dir/errors"; failed=1; }
[ "$integrity" = ok ] || { echo "FAIL integrity_check: $integrity"; failed=1; }
[ "$rss1" -le $((rss0 + 8192)) ] || { echo "FAIL probe RSS grew"; failed=1; }
# +2: the check path opens its own SQLite connection (database and WAL) at its first flush turn, which
# can come after the first sample; a leak grows with every kill and growth, far past that.
[ "$fd1" -le $((fd0 + 2)) ] || { echo "FAIL probe descriptors grew"; failed=1; }
[ "$maps1" -le $((maps0 + 4)) ] || { echo "FAIL probe mappings grew"; failed=1; }
[ "$size1" -gt "$size0" ] || { echo "FAIL the counters file never grew"; failed=1; }
[ "$failed" = 0 ] && echo "soak: passed"
[ "$failed" = 0 ]
