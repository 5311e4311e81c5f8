#!/usr/bin/env bash
# Builds target/nginx/ngx_http_ms_auth_module.so against the installed nginx
# (Debian's nginx + nginx-dev, configured with the same flags and --with-compat),
# linking libms_auth.a statically.
#   MS_AUTH_TARGET_DIR   where libms_auth.a lives (default: <repo>/target/release)
#   MS_AUTH_INCLUDE_DIR  where ms_auth.h lives   (default: <repo>/include)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
LIB_DIR=$(realpath -m "${MS_AUTH_TARGET_DIR:-$REPO/target/release}")
INC_DIR=$(realpath -m "${MS_AUTH_INCLUDE_DIR:-$REPO/include}")
OUT=$REPO/target/nginx
SO=$OUT/ngx_http_ms_auth_module.so

# shellcheck source=lib.sh
. "$HERE/lib.sh"

ensure_packages nginx nginx-dev gcc make libc6-dev binutils

[ -f "$LIB_DIR/libms_auth.a" ] || { say "no $LIB_DIR/libms_auth.a: run 'cargo build --release' first (or set MS_AUTH_TARGET_DIR)"; exit 1; }
[ -f "$INC_DIR/ms_auth.h" ] || { say "no $INC_DIR/ms_auth.h (set MS_AUTH_INCLUDE_DIR)"; exit 1; }

# Up to date: newer than every input, including the nginx we build against.
if [ -f "$SO" ] && [ -z "${MS_AUTH_NGINX_REBUILD:-}" ]; then
    stale=0
    for f in "$HERE/ngx_http_ms_auth_module.c" "$HERE/config" "$HERE/build.sh" "$HERE/lib.sh" \
             "$LIB_DIR/libms_auth.a" "$INC_DIR/ms_auth.h" /usr/sbin/nginx \
             /usr/share/nginx/src/conf_flags; do
        [ "$f" -nt "$SO" ] && stale=1
    done
    if [ $stale -eq 0 ] && [ "$(cat "$OUT/build/inputs" 2>/dev/null)" = "$LIB_DIR $INC_DIR" ]; then
        say "up to date: $SO"
        exit 0
    fi
fi

BUILD=$OUT/build
rm -rf "$BUILD"
mkdir -p "$BUILD/module"
# configure writes into the source tree: work on a copy, not /usr/share/nginx/src
cp -a /usr/share/nginx/src "$BUILD/nginx-src"
cp "$HERE/config" "$HERE/ngx_http_ms_auth_module.c" "$BUILD/module/"

cd "$BUILD/nginx-src"
# shellcheck disable=SC1091
. ./conf_flags   # NGX_CONF_FLAGS: the flags Debian's nginx was configured with
export MS_AUTH_INCLUDE_DIR=$INC_DIR MS_AUTH_LIB_DIR=$LIB_DIR
say "configuring against nginx $(nginx -v 2>&1 | sed 's/.*nginx\///')"
./configure \
    --with-cc-opt="-g -O2 -fstack-protector-strong -Wformat -Werror=format-security -fPIC -D_FORTIFY_SOURCE=2" \
    --with-ld-opt="-Wl,-z,relro -Wl,-z,now -fPIC -Wl,--exclude-libs,ALL" \
    "${NGX_CONF_FLAGS[@]}" \
    --add-dynamic-module="$BUILD/module" >"$BUILD/configure.log" 2>&1 \
    || { tail -30 "$BUILD/configure.log" >&2; exit 1; }
make -j"$(nproc)" -f objs/Makefile modules >"$BUILD/make.log" 2>&1 || { tail -40 "$BUILD/make.log" >&2; exit 1; }

cp objs/ngx_http_ms_auth_module.so "$SO.tmp"
mv "$SO.tmp" "$SO"
echo "$LIB_DIR $INC_DIR" >"$BUILD/inputs"
say "built $SO"
