#!/usr/bin/env bash
# Builds every C program in tests/c against the committed header with -Wall -Wextra -Werror -pedantic,
# links each to libms_auth.a and to libms_auth.so, runs them, then runs them again under AddressSanitizer
# and under valgrind memcheck (installed here if missing). ASan sees only the C side's instrumented code;
# memcheck sees every byte the Rust library and the bundled SQLite touch, uninstrumented.
# Needs `cargo build --release` first (scripts/test.sh does it).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
lib=${MS_AUTH_TARGET_DIR:-$root/target/release}
out=$root/target/c-tests
mkdir -p "$out"
cflags=(-std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -pedantic -I"$root/include")
static_libs=("$lib/libms_auth.a" -lpthread -ldl -lm)
shared_libs=(-L"$lib" -lms_auth -Wl,-rpath,"$lib" -lpthread)
if ! command -v valgrind >/dev/null; then
    (apt-get install -y -qq valgrind || (apt-get update -qq && apt-get install -y -qq valgrind)) >/dev/null
fi
passed=0
failed=0

run() { # name, command...
    local name=$1
    shift
    if "$@" >"$out/$name.log" 2>&1; then
        passed=$((passed + 1))
        echo "ok   $name"
    else
        failed=$((failed + 1))
        echo "FAIL $name"
        sed 's/^/    /' "$out/$name.log"
    fi
}

example_db=$(mktemp -d)/keys.db
for variant in static shared asan-static asan-shared; do
    extra=()
    case $variant in asan-*) extra=(-fsanitize=address,undefined -fno-omit-frame-pointer -g) ;; esac
    libs=("${static_libs[@]}")
    case $variant in *shared) libs=("${shared_libs[@]}") ;; esac
    for src in "$root"/tests/c/*.c; do
        name=$(basename "$src" .c)-$variant
        gcc "${cflags[@]}" "${extra[@]}" "$src" "${libs[@]}" -o "$out/$name"
        deps=$(ldd "$out/$name")
        if [ "$variant" = shared ] && [[ $deps != *libms_auth.so* ]]; then
            echo "FAIL $name is not linked to libms_auth.so"; failed=$((failed + 1))
        fi
        if [ "$variant" = static ] && [[ $deps == *libms_auth.so* ]]; then
            echo "FAIL $name is linked to libms_auth.so"; failed=$((failed + 1))
        fi
        case $name in
            example-*) run "$name" bash -c "'$out/$name' '$example_db' missing-key-value | grep -qx '401 .*api_key_invalid.*'" ;;
            *) run "$name" env ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1 "$out/$name" ;;
        esac
    done
done
# memcheck over the static builds: an invalid read or write, a use of uninitialised memory, or a definite
# leak fails the run (Rust's and SQLite's process-lifetime allocations are "still reachable", not leaks).
memcheck=(valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite --track-origins=yes)
for src in "$root"/tests/c/*.c; do
    name=$(basename "$src" .c)-static
    case $name in
        example-*) run "$name-memcheck" bash -c "${memcheck[*]} '$out/$name' '$example_db' missing-key-value | grep -qx '401 .*api_key_invalid.*'" ;;
        *) run "$name-memcheck" "${memcheck[@]}" "$out/$name" ;;
    esac
done
echo "c: $passed passed, $failed failed"
[ "$failed" = 0 ]
