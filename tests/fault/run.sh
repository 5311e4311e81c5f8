#!/usr/bin/env bash
# Injected I/O faults. Needs `cargo build --release` first (scripts/test.sh does it) and root (mounts).
# 1. libfiu (Debian's fiu-utils and libfiu-dev, installed here if missing): a process checks one key with a
#    quota while writes, syncs and opens fail at random: every check answers a decision, the failures were
#    seen (ms_auth_flush_failures_total), the database passes integrity_check, the quota is exact.
# 2. The whole workload (tests/fault/workload.c) in four processes over 300 keys (checks, creates,
#    revokes, plan changes, usage reads that flush) while open/read/pread/write/pwrite/fsync/fdatasync/
#    ftruncate/mmap/unlink/rename/posix_fallocate fail at random, the store opened under the faults too.
# 3. A full disk: 4,000 keys on a tmpfs with too little room for the WAL to grow or the counters file to
#    grow (past 4,096 keys), under two processes.
# 4. The files made read-only (and the directory unwritable) for a while under two processes running as an
#    unprivileged user, a third process opening meanwhile.
# 5. The counters file deleted under two processes; then the database and its WAL deleted under them.
# In every case: each call answers a decision or an MS_ERR_* whose ms_last_error() says what failed, no
# process dies; afterwards (faults over) the store opens, passes integrity_check, every key's count equals
# the admissions its callers saw (no count lost: they are in the shared file at once, and flushes that
# failed are retried), no quota admitted past its limit, and every create that answered MS_OK is there.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
lib=$root/target/release
cli=$lib/ms-auth
if ! command -v fiu-run >/dev/null || [ ! -f /usr/include/fiu-control.h ]; then
    (apt-get install -y -qq fiu-utils libfiu-dev || (apt-get update -qq && apt-get install -y -qq fiu-utils libfiu-dev)) >/dev/null
fi
out=$root/target/fault-tests
mkdir -p "$out"
gcc -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -pedantic -I"$root/include" -I"$root/tests/c" \
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
gcc -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -pedantic -I"$root/include" -I"$root/tests/c" \
    "$root/tests/fault/workload.c" "$lib/libms_auth.a" -lfiu -lpthread -ldl -lm -o "$out/workload"
workload=$out/workload
integrity() { python3 -c 'import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute("PRAGMA integrity_check").fetchone()[0])' "$1"; }
# Runs `workload run` in the background: store $1, its callers' files in $2 (never on the small disk: a
# page of their shared mapping first written on a full disk would be a SIGBUS of the test's own), worker $3,
# the rest a prefix command.
spawn() { local db=$1 d=$2 w=$3; shift 3; "$@" "$workload" run "$db" "$d" "$w" "$iters" "$prob" >>"$d/out" 2>>"$d/err" & }
answered() { # every process exited 0: no crash, and no error without a message (exit 3)
    local d=$1 rc=0
    shift
    for p in "$@"; do wait "$p" || rc=$?; done
    [ "$rc" = 0 ] || { echo "    a process failed ($rc):"; sed 's/^/    /' "$d/err" | head -5; return 1; }
}
verified() { # store, callers' dir
    local v
    v=$("$workload" verify "$1" "$2" 2>>"$2/err") || { echo "    $v"; sed 's/^/    /' "$2/err" | tail -5; return 1; }
    echo "    $(paste -sd' ' "$2/out" | cut -c1-200)"
    echo "    $v"
    [ "$(integrity "$1")" = ok ]
}

echo "-- the whole workload, four processes, random failures of every I/O call"
w2=$dir/workload && mkdir "$w2"
"$workload" setup "$w2/k.db" "$w2" 300
iters=20000 prob=0.05
pids=()
for w in 1 2 3 4; do spawn "$w2/k.db" "$w2" "$w" fiu-run -x; pids+=($!); done
check "every call of four processes under random I/O failures answered" answered "$w2" "${pids[@]}"
check "afterwards: exact counts, quotas kept, creates present, integrity" verified "$w2/k.db" "$w2"
check "the failures reached the callers as errors with messages" grep -q "store_unavailable: " "$w2/err"

# Mounting a tmpfs needs root (CI runs as root); without it, RLIMIT_FSIZE stands in for the full disk.
fs=$dir/fs
mkdir -p "$fs"
if mount -t tmpfs -o size=64m tmpfs "$fs" 2>/dev/null; then
    trap 'umount -l "$fs" 2>/dev/null; rm -rf "$dir"' EXIT
    mounted=1
else
    mounted=0
    echo "    (no mount allowed: the full disk is RLIMIT_FSIZE)"
fi

echo "-- a full disk"
w3=$dir/full && mkdir "$w3" "$fs/full"
db3=$fs/full/k.db
"$workload" setup "$db3" "$w3" 4000
iters=20000 prob=0
if [ "$mounted" = 1 ]; then
    used=$(du -sk "$fs" | cut -f1)
    mount -o remount,size=$((used + 1024))k "$fs" # 1 MiB to spare: the counters file cannot grow
    pids=()
    for w in 1 2; do spawn "$db3" "$w3" "$w" env; pids+=($!); done
else
    pids=()
    for w in 1 2; do spawn "$db3" "$w3" "$w" bash -c 'trap "" XFSZ; ulimit -f 12000; exec "$@"' limit; pids+=($!); done
fi
check "every call on a full disk answered" answered "$w3" "${pids[@]}"
check "the full disk reached the callers as errors with messages" grep -Eq "full|space|File too large" "$w3/err"
[ "$mounted" = 1 ] && mount -o remount,size=64m "$fs"
check "with room again: exact counts, quotas kept, creates present, integrity" verified "$db3" "$w3"

echo "-- files made read-only mid-run"
w4=$dir/ro && mkdir "$w4" "$fs/ro"
s4=$fs/ro
"$workload" setup "$s4/k.db" "$w4" 300
chown -R 65534:65534 "$w4" "$s4"
chmod 0711 "$dir" # mktemp's 0700 would keep the unprivileged callers out of everything
iters=200000 prob=0
as_nobody=(setpriv --reuid=65534 --regid=65534 --clear-groups)
pids=()
for w in 1 2; do spawn "$s4/k.db" "$w4" "$w" "${as_nobody[@]}"; pids+=($!); done
sleep 1
# The directory first: then no file comes or goes in it (a growth's temporary file, listed by the glob,
# could otherwise be renamed away before chmod reaches it).
chmod 0500 "$s4"
chmod 0400 "$s4"/k.db*
late=$("${as_nobody[@]}" "$root/target/release/ms-auth" --db "$s4/k.db" key list 2>&1 >/dev/null || true)
sleep 1
chmod 0600 "$s4"/k.db*
chmod 0700 "$s4"
check "an open of the read-only store is refused with the reason" grep -q "read" <<<"$late"
echo "    $late"
check "running processes answered every call while the files were read-only" answered "$w4" "${pids[@]}"
check "afterwards: exact counts, quotas kept, creates present, integrity" verified "$s4/k.db" "$w4"

echo "-- files deleted mid-run"
w5=$dir/gone && mkdir "$w5"
"$workload" setup "$w5/k.db" "$w5" 300
iters=100000 prob=0
pids=()
for w in 1 2; do spawn "$w5/k.db" "$w5" "$w" env; pids+=($!); done
sleep 0.5
rm "$w5/k.db-counters"
check "running processes answered every call with the counters file deleted" answered "$w5" "${pids[@]}"
# What was charged to the deleted file since its last flush (20 ms here) is the documented loss.
export MS_FAULT_MAY_LOSE=10
check "the counters file was rebuilt; at most the flush window's counts lost" verified "$w5/k.db" "$w5"
unset MS_FAULT_MAY_LOSE
pids=()
for w in 3 4; do spawn "$w5/k.db" "$w5" "$w" env; pids+=($!); done
sleep 0.5
rm "$w5"/k.db "$w5"/k.db-wal "$w5"/k.db-shm 2>/dev/null || true
check "running processes answered every call with the database deleted" answered "$w5" "${pids[@]}"

echo "fault: $passed passed, $failed failed"
[ "$failed" = 0 ]
