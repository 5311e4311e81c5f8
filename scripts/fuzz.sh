#!/usr/bin/env bash
# Runs every fuzz target (fuzz/, cargo-fuzz + libFuzzer) on nightly for N seconds each (default 60).
# Not part of CI: the corpus and crash inputs are replayed on stable by `cargo test --test fuzz_regressions`.
# New corpus entries land in fuzz/corpus/<target>/; minimize before committing:
#   (cd fuzz && cargo +nightly fuzz cmin <target>)
# A crash is written to fuzz/artifacts/<target>/: copy it to fuzz/regressions/<target>/ with the fix.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"

if ! cargo +nightly --version >/dev/null 2>&1; then
    rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

cd fuzz
for target in $(cargo +nightly fuzz list); do
    echo "== fuzz $target for ${seconds}s"
    # One job: the machine may be shared. -timeout: an input slower than 10 s is a hang.
    cargo +nightly fuzz run "$target" -- -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096
done
