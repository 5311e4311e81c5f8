#!/usr/bin/env bash
# Crash consistency: an admin process making changes back to back and three checking processes (one
# flushing at nearly every check) are killed with SIGKILL at random instants, round after round; then a
# simulated reboot: everything is killed and the next rounds run with another boot id (a private mount
# namespace with a file bound over /proc/sys/kernel/random/boot_id), so the counters file is discarded
# and rebuilt from the database, as after a real reboot. Then tests/crash/crash.c verify: every admin
# change that answered MS_OK is there and whole, the counters file agrees with the database, the quota
# never admitted past its limit, the exact count lost nothing but the reboot's flush window.
# Needs `cargo build --release` first (scripts/test.sh does it); root (for the mount namespace).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
rounds=${1:-12}
out=$root/target/crash-tests
mkdir -p "$out"
gcc -std=c11 -D_GNU_SOURCE -O2 -Wall -Wextra -Werror -pedantic -I"$root/include" -I"$root/tests/c" "$root/tests/crash/crash.c" \
    "$root/target/release/libms_auth.a" -lpthread -ldl -lm -o "$out/crash"
crash=$out/crash
dir=$(mktemp -d)
trap 'kill -9 $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
db=$dir/keys.db
date +%s%3N >"$dir/t0"
"$crash" setup "$db" "$dir"
echo "another boot" >"$dir/boot_id"

# One round: start everything (in the other boot's namespace when asked), let it run a random 0.2-1.2 s,
# kill -9 every process at its own random instant.
round() { # boot: this|other
    local prefix=()
    [ "$1" = other ] && prefix=(unshare -m sh -c "mount --bind '$dir/boot_id' /proc/sys/kernel/random/boot_id && exec \"\$0\" \"\$@\"")
    local pids=()
    "${prefix[@]}" "$crash" admin "$db" "$dir" 2>>"$dir/errors" & pids+=($!)
    for w in 0 1 2; do "${prefix[@]}" "$crash" check "$db" "$dir" "$w" 2>>"$dir/errors" & pids+=($!); done
    sleep "0.$((2 + RANDOM % 8))"
    for p in "${pids[@]}"; do
        sleep "0.0$((RANDOM % 10))"
        kill -9 "$p" 2>/dev/null || true
    done
    wait 2>/dev/null || true
} 2>/dev/null # bash's "Killed" notices

for ((i = 0; i < rounds; i++)); do round this; done
reboot_ms=$(date +%s%3N)
before=$(stat -c %i "$db-counters")
for ((i = 0; i < rounds; i++)); do round other; done
# The other boot's processes must have discarded this boot's counters file (a new file, by rename).
[ "$(stat -c %i "$db-counters")" != "$before" ] || { echo "FAIL the reboot kept the counters file"; exit 1; }
if [ -s "$dir/errors" ]; then
    echo "FAIL a process answered an error:"; head "$dir/errors"; exit 1
fi
# The window a reboot may take: counts not yet written by a flush (1 s covers the 100 ms interval and a
# turn lost to a busy write lock, the documented default interval).
result=$(unshare -m sh -c "mount --bind '$dir/boot_id' /proc/sys/kernel/random/boot_id && exec \"\$0\" \"\$@\"" \
    "$crash" verify "$db" "$dir" "$((reboot_ms - 1000))" "$reboot_ms") || { echo "FAIL $result"; exit 1; }
integrity=$(python3 -c 'import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute("PRAGMA integrity_check").fetchone()[0])' "$db")
[ "$integrity" = ok ] || { echo "FAIL integrity_check: $integrity"; exit 1; }
echo "crash: $((2 * rounds)) rounds of kill -9 ($rounds after a simulated reboot): $result, integrity ok"
