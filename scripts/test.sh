#!/usr/bin/env bash
# Every test of ms-auth, from a fresh machine: Rust (unit, integration, ABI, CLI, header freshness, fuzz
# regressions), lint, C programs (static, shared, AddressSanitizer, valgrind memcheck), the console in a
# browser, fault injection (libfiu, a full disk, read-only and deleted files), crash consistency (kill -9
# and a simulated reboot), a one-minute soak, each host binding that has landed, and the release
# artifacts installed and used outside the repository. Runs as root (mounts, a mount namespace).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

echo "== system packages"
# The fleet tests run a real redis-server (Debian's), the CLI's tests complete commands in zsh and fish
# (and bash); the fault tests install libfiu and the C tests valgrind themselves.
missing=""
for tool in redis-server zsh fish; do
    command -v "$tool" >/dev/null || missing="$missing $tool"
done
if [ -n "$missing" ]; then
    (apt-get install -y -qq $missing || (apt-get update -qq && apt-get install -y -qq $missing)) >/dev/null
fi
redis-server --version

echo "== lint"
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings

echo "== build"
cargo build --release --quiet

echo "== Rust tests"
cargo test --quiet 2>&1

echo "== C tests"
bash tests/c/run.sh

echo "== console in a browser (Debian's chromium, Selenium)"
bash tests/console/run.sh

echo "== fault injection (libfiu, full disk, read-only and deleted files)"
bash tests/fault/run.sh

echo "== crash consistency (kill -9 at random instants, simulated reboot)"
bash tests/crash/run.sh

echo "== soak (1 minute, 10,000 keys)"
bash scripts/soak.sh 1 10000

for binding in $(cat bindings/LANDED 2>/dev/null); do
    echo "== bindings/$binding"
    bash "bindings/$binding/test.sh"
done

echo "== cross-host answers (nginx, WSGI, Go)"
bash scripts/cross_host.sh

echo "== distribution (make install, tarball, .deb + nginx module .deb, wheel, Go module)"
bash packaging/test.sh
echo "== all tests passed"
