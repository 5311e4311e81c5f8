#!/usr/bin/env bash
# Runs every test of the Go binding: gofmt, go vet, go test -race (all tests,
# verbose, with the runner's summary), a check that the test binaries do not
# depend on libms_auth.so, and the suite again linked through pkg-config.
# Run from anywhere, after `cargo build --release`. Honours MS_AUTH_TARGET_DIR.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$HERE/env.sh"
cd "$HERE"
go version

echo "== gofmt"
unformatted="$(gofmt -l .)"
if [ -n "$unformatted" ]; then echo "not gofmt-clean: $unformatted" >&2; exit 1; fi

echo "== go vet"
go vet ./...

# No libms_auth.so among the binary's dependencies, and the ABI linked in.
check_static() {
  local bin="$1" deps syms
  deps="$(ldd "$bin")"
  syms="$(go tool nm "$bin")"
  if grep -q 'libms_auth' <<<"$deps"; then
    echo "FAIL: $bin depends on a shared libms_auth:" >&2; echo "$deps" >&2; exit 1
  fi
  if ! grep -qE ' T ms_store_check$' <<<"$syms"; then
    echo "FAIL: ms_store_check is not linked into $bin" >&2; exit 1
  fi
  echo "static: $(basename "$bin") contains ms_store_check; shared deps: $(awk '{print $1}' <<<"$deps" | tr '\n' ' ')"
}

echo "== go test -race"
log="$GOBUILD/test-race.log"
set +e
go test -race -count=1 -v ./... 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
passed=$(grep -cE '^\s*--- PASS' "$log" || true)
failed=$(grep -cE '^\s*--- FAIL' "$log" || true)
echo "go test -race: $passed passed, $failed failed (exit $rc)"
[ "$rc" -eq 0 ] || exit "$rc"

echo "== static link (default #cgo flags)"
go test -race -c -o "$GOBUILD/msauth.race.test" ./msauth
check_static "$GOBUILD/msauth.race.test"

echo "== pkg-config link (-tags msauth_pkgconfig), whole suite without -race"
pcdir="$GOBUILD/pkgconfig"
mkdir -p "$pcdir"
version="$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$REPO/Cargo.toml" | head -n1)"
sed -e "s|@LIBDIR@|$TARGET|" -e "s|@INCLUDEDIR@|$INCLUDE|" -e "s|@VERSION@|${version:-1.0.0}|" \
  "$HERE/ms_auth.pc.in" > "$pcdir/ms_auth.pc"
# Only pkg-config supplies the flags here: the environment's are cleared.
export PKG_CONFIG_PATH="$pcdir" CGO_CFLAGS="-g -O2 -DMS_AUTH_BUILD_DIGEST=$DIGEST" CGO_LDFLAGS="-g -O2"
go vet -tags msauth_pkgconfig ./...
go test -tags msauth_pkgconfig -c -o "$GOBUILD/msauth.pc.test" ./msauth
check_static "$GOBUILD/msauth.pc.test"
(cd "$HERE/msauth" && "$GOBUILD/msauth.pc.test" -test.count=1)

echo "Go binding: all checks passed ($passed tests under -race)"
