#!/usr/bin/env bash
# The check through the C ABI against a bare SHA-256 of the key (OpenSSL's SHA256_Init/Update/Final), in
# the same run. Builds benches/c/check_bench.c with -O2 against target/release/libms_auth.a (building the
# library first if it is missing) and runs it.
#
#   bash benches/c/run.sh                       the table, 15 interleaved rounds, 1,000 vs 1,000,000 keys
#   ROUNDS=9 LARGE_KEYS=0 bash benches/c/run.sh no large store (1,000,000 keys: ~1.2 GB of counters file
#                                               under /tmp, built once and reused from LARGE_DIR)
#   BEFORE_LIB=/other/tree/target/release/libms_auth.a RUNS=3 bash benches/c/run.sh
#                                               also builds the bench against another build of the library
#                                               and alternates the two binaries RUNS times each (before,
#                                               after, before, ...), so both are measured in the same run
#   CALLGRIND=1 bash benches/c/run.sh           instructions per check of each case (valgrind), the stable
#                                               figure on a noisy machine: a run of 1,000 calls is
#                                               subtracted from one of 11,000, so set-up cancels out
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
lib=${MS_AUTH_TARGET_DIR:-$root/target/release}
out=$root/target/c-bench
mkdir -p "$out"

if [ ! -e /usr/include/openssl/sha.h ]; then
    echo "installing libssl-dev (OpenSSL's headers, for the SHA-256 floor)" >&2
    if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq libssl-dev >/dev/null; else sudo apt-get update -qq && sudo apt-get install -y -qq libssl-dev >/dev/null; fi
fi
if [ ! -e "$lib/libms_auth.a" ]; then
    (cd "$root" && cargo build --release --lib)
fi

build() { # library, output
    gcc -std=c11 -D_GNU_SOURCE -O2 -Wall -Wextra -Werror -I"$root/include" "$root/benches/c/check_bench.c" \
        "$1" -lcrypto -lpthread -ldl -lm -o "$2"
}
build "$lib/libms_auth.a" "$out/check_bench"
bins=("$out/check_bench")
names=(after)
if [ -n "${BEFORE_LIB:-}" ]; then
    build "$BEFORE_LIB" "$out/check_bench_before"
    bins=("$out/check_bench_before" "$out/check_bench")
    names=(before after)
fi

if [ -n "${CALLGRIND:-}" ]; then
    command -v valgrind >/dev/null || { echo "valgrind is not installed" >&2; exit 1; }
    irs() { # binary case iters
        valgrind --tool=callgrind --callgrind-out-file=/dev/null "$1" --only "$2" "$3" 2>&1 |
            sed -n 's/.*Collected : *\([0-9]*\).*/\1/p'
    }
    printf '%-10s' case
    printf ' %14s' "${names[@]}"
    echo '   (instructions per check, callgrind)'
    for c in sha256 hot unknown badsum badprefix; do
        printf '%-10s' "$c"
        for b in "${bins[@]}"; do
            a=$(irs "$b" "$c" 1000)
            z=$(irs "$b" "$c" 11000)
            printf ' %14s' "$(((z - a) / 10000))"
        done
        echo
    done
    exit 0
fi

large=${LARGE_KEYS:-1000000}
large_dir=${LARGE_DIR:-/tmp/ms-auth-cbench-$large}
for run in $(seq "${RUNS:-1}"); do
    for i in "${!bins[@]}"; do
        echo "== ${names[$i]} (run $run)"
        if [ "$large" -gt 0 ]; then
            "${bins[$i]}" "${ROUNDS:-15}" "$large" "$large_dir"
        else
            "${bins[$i]}" "${ROUNDS:-15}" 0
        fi
    done
done
