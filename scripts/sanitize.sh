#!/usr/bin/env bash
# The Rust code under the nightly checkers (not in CI: they need nightly, and CI must not):
#   bash scripts/sanitize.sh [tsan|asan|miri]...      (default: all three)
# - tsan: ThreadSanitizer over the multi-thread and multi-process tests (tests/multiprocess.rs, whose
#   children are the same instrumented binary, and the store's threaded tests; which ones, below);
# - asan: AddressSanitizer (with LeakSanitizer) over the unit tests, the ABI tests and the damaged-file
#   tests (tests/abi.rs, tests/defects.rs);
# - miri: Miri over the pure modules (key, period, gcra, policy, spec, cli_values, headers): undefined
#   behaviour in their unsafe-free code would be a compiler or dependency bug, and Miri is what finds it.
# The standard library is rebuilt with the sanitizer (-Zbuild-std), or it would hide races and misuse in
# its own code; the bundled SQLite (C) is not instrumented, but the sanitizers' interceptors (memcpy,
# locks, allocations) still see what it does through them. Each run is its own target dir. On two shared
# cores: each build 5-8 minutes, then tsan 1 minute, asan 1, miri 2.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
if ! cargo +nightly --version >/dev/null 2>&1; then
    rustup toolchain install nightly --profile minimal
fi
rustup +nightly component add rust-src miri >/dev/null
target=x86_64-unknown-linux-gnu
# RUSTFLAGS replaces .cargo/config.toml's flags, so the CPU feature the counters need is repeated here.
base="-C target-feature=+cmpxchg16b -C force-frame-pointers=yes"
runs=("$@")
[ ${#runs[@]} -gt 0 ] || runs=(tsan asan miri)

for run in "${runs[@]}"; do
    case $run in
    tsan)
        echo "== ThreadSanitizer: multi-thread and multi-process tests"
        # halt_on_error: the first race fails the run instead of scrolling by. Reports that are not races
        # of ours are suppressed in scripts/tsan.supp, each with its reason.
        # Narrowed to the tests that run threads or processes on one store (a test with one thread has
        # nothing to race), but for these:
        # - the two multi-process tests that create 5,000 keys one by one in a single thread (minutes under
        #   TSan; growth under threads is store.rs's threads_keep_deciding_while_the_counters_file_grows);
        # - the multi-process tests whose processes charge one key at the same time and assert exact
        #   counts: under TSan a 128-bit atomic (a key's quota count and rate bucket, one
        #   compare-and-swap) is emulated by TSan's runtime under a lock of its own process
        #   (compiler-rt's tsan_interface_atomic.cpp, mutex128; the runtime Rust ships has no
        #   cmpxchg16b), so it is not atomic across processes and they over-admit (3,004 of a quota of
        #   3,000 in one run) where the real build, with `lock cmpxchg16b`, is exact. Their threads race
        #   inside one process the way store.rs's threaded tests do, which TSan runs.
        tsan() {
            TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$PWD/scripts/tsan.supp" \
                RUSTFLAGS="$base -Zsanitizer=thread" RUSTDOCFLAGS="-Zsanitizer=thread" CARGO_TARGET_DIR=target/tsan \
                cargo +nightly test -Zbuild-std --target "$target" "$@"
        }
        tsan --test multiprocess -- --test-threads=2 --skip the_counters_file_grows --skip a_grown_file \
            --skip across_four_processes --skip shared_by_four_processes --skip opened_before_fork \
            --skip kill_9_under_load --skip every_process_dies_uncleanly
        tsan --test store -- --test-threads=2 threads_ under_contention through_another_handle \
            never_waits_for_the_write_lock at_the_same_instant
        ;;
    asan)
        echo "== AddressSanitizer: unit, ABI and damaged-file tests"
        # Leaks the tests make on purpose are listed, with the reason, in scripts/lsan.supp.
        ASAN_OPTIONS="detect_leaks=1 abort_on_error=1 detect_stack_use_after_return=1" \
            LSAN_OPTIONS="suppressions=$PWD/scripts/lsan.supp" \
            RUSTFLAGS="$base -Zsanitizer=address" CARGO_TARGET_DIR=target/asan \
            cargo +nightly test -Zbuild-std --target "$target" --lib --test abi --test defects --test fuzz_regressions
        ;;
    miri)
        echo "== Miri: pure modules"
        # Isolation off: some tests read the clock. Module paths select the pure modules' tests only.
        # Skipped: two loops of plain safe arithmetic that take Miri over ten minutes each and give it nothing
        # more to find than the other tests of their modules (no unsafe, no pointers): a bucket of 87,672
        # run through 255,000 admissions, and 20,000 random keys classified twice (the classification is
        # still run by the other key:: tests).
        MIRIFLAGS="-Zmiri-disable-isolation" CARGO_TARGET_DIR=target/miri \
            cargo +nightly miri test --lib -- key:: period:: gcra:: policy:: spec:: cli_values:: headers:: \
            --skip the_largest_accepted_buckets_admit_exactly_their_burst \
            --skip the_fast_classification_agrees_with_the_reference
        ;;
    *)
        echo "unknown run $run (tsan, asan, miri)" >&2
        exit 2
        ;;
    esac
done
echo "== sanitize: passed"
