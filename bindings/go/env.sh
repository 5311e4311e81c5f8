# Sourced by test.sh and bench.sh: finds the library, installs the Go
# toolchain when missing, and sets a local, offline Go environment.
# Expects HERE (this folder) to be set.

REPO="$(cd "$HERE/../.." && pwd)"
TARGET="${MS_AUTH_TARGET_DIR:-$REPO/target/release}"
INCLUDE="${MS_AUTH_INCLUDE_DIR:-$REPO/include}"
if [ ! -f "$TARGET/libms_auth.a" ]; then
  echo "error: $TARGET/libms_auth.a not found: run 'cargo build --release' (or set MS_AUTH_TARGET_DIR)" >&2
  exit 1
fi
if [ ! -f "$INCLUDE/ms_auth.h" ]; then
  echo "error: $INCLUDE/ms_auth.h not found (set MS_AUTH_INCLUDE_DIR)" >&2
  exit 1
fi
TARGET="$(cd "$TARGET" && pwd)"
INCLUDE="$(cd "$INCLUDE" && pwd)"

# Tools: Debian's Go (1.19 on Debian 12), a C compiler for cgo, pkg-config
# for the install-elsewhere link test, ldd for the static-link check, the
# sqlite3 shell to hold a store's write lock from another process (the
# context tests).
missing=()
command -v go >/dev/null 2>&1 || missing+=(golang-go)
command -v gcc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
command -v ldd >/dev/null 2>&1 || missing+=(libc-bin)
command -v sqlite3 >/dev/null 2>&1 || missing+=(sqlite3)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Debian's golang-go puts go in /usr/bin; older images only in /usr/lib/go/bin.
command -v go >/dev/null 2>&1 || export PATH="$PATH:/usr/lib/go/bin"

# Offline and local: stdlib only, no module downloads, caches under target/.
export GOTOOLCHAIN=local GOFLAGS=-mod=mod GOPROXY=off GOSUMDB=off GO111MODULE=on CGO_ENABLED=1
export GOCACHE="$REPO/target/go/cache" GOPATH="$REPO/target/go/path"
mkdir -p "$GOCACHE" "$GOPATH"

# Environment flags come before the package's #cgo flags, so these win over
# the repository defaults. Go's build cache does not hash the header or the
# archive behind a flag: a digest of both in CGO_CFLAGS makes a rebuilt
# library recompile and relink the package instead of using a stale cache.
DIGEST="$(cat "$TARGET/libms_auth.a" "$INCLUDE/ms_auth.h" | sha256sum | cut -c1-16)"
export CGO_CFLAGS="-g -O2 -I$INCLUDE -DMS_AUTH_BUILD_DIGEST=$DIGEST"
export CGO_LDFLAGS="-g -O2 -L$TARGET"

GOBUILD="$REPO/target/go/build"
mkdir -p "$GOBUILD"
