#!/usr/bin/env bash
# Builds the release artifacts (packaging/build.sh), then installs each into a clean temporary place,
# away from the repository and with no cargo on PATH, and uses it as its ecosystem's users would:
#   make install PREFIX=...   files, soname, pkg-config; the README's C commands, the programs run as built
#   tarball                   unpacked anywhere: the CLI; the README's C commands (shared with its rpath,
#                             static) through the relocatable ms_auth.pc, the programs run with no
#                             LD_LIBRARY_PATH
#   .deb                      dpkg-deb --info/--contents, lintian, dpkg -x, the CLI and the library from it;
#                             ms-auth, libms-auth1 and libms-auth-dev installed with dpkg (through apt-get):
#                             the CLI, a C app through the system's pkg-config, every man page rendered,
#                             the completions (bash's tried), the systemd units verified and scored, then
#                             -dev removed alone and all purged, leaving nothing;
#                             the nginx module package installed with dpkg (through apt-get) and purged at
#                             the end: enabled on first install only, an admin's removed link or edited file
#                             kept on upgrade and reinstall, nginx-reload triggered, a store made as the
#                             README says serving 401/200 through the enabled module
#   wheel                     its WHEEL metadata (not purelib, the platform tag), auditwheel confirms the
#                             tag; pip install into a fresh venv, the README's one-liner, a check and the
#                             WSGI middleware
#   Go module                 a consumer module with a replace directive, GOFLAGS=-mod=mod GOPROXY=off,
#                             go build with no CGO_* variables, the binary run
# Ends with "distribution: N passed, 0 failed". Installs what it needs (apt, pip into a venv) itself.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION="$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$REPO/Cargo.toml" | head -n1)"
DIST="$REPO/target/dist"

need=()
command -v nginx >/dev/null || need+=(nginx)
command -v curl >/dev/null || need+=(curl)
command -v go >/dev/null || need+=(golang-go)
command -v gcc >/dev/null || need+=(gcc libc6-dev)
command -v pkg-config >/dev/null || need+=(pkg-config)
command -v lintian >/dev/null || need+=(lintian)
# The wheel is installed with the system's Python (the clean PATH below has no pyenv or other).
/usr/bin/python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3 python3-venv)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi

# MS_AUTH_DIST_REUSE=1 tests the artifacts of an earlier build.sh run as they are (while editing this file).
[ -n "${MS_AUTH_DIST_REUSE:-}" ] || bash "$REPO/packaging/build.sh"

# Everything below runs in $WORK, outside the repository, with a PATH that has no cargo or rustc
# (the system's directories only), so an install that secretly needs the toolchain or the tree fails.
WORK="$(mktemp -d /tmp/ms-auth-dist.XXXXXX)"
NGINX_PID=""
MODULE_INSTALLED=""
cleanup() {
    [ -n "$NGINX_PID" ] && kill "$NGINX_PID" 2>/dev/null || true
    # The packages this run installed are purged, also after a failure: the system as it was.
    # Only those dpkg knows of: apt-get refuses a purge that names a package it cannot find.
    if [ -n "$MODULE_INSTALLED" ]; then
        local known=() p
        for p in libnginx-mod-http-ms-auth ms-auth libms-auth-dev libms-auth1; do
            dpkg-query -W "$p" >/dev/null 2>&1 && known+=("$p")
        done
        [ ${#known[@]} -eq 0 ] || env DEBIAN_FRONTEND=noninteractive apt-get -y -qq -o DPkg::Lock::Timeout=600 \
            purge "${known[@]}" >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
CLEAN_PATH=/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin
clean() { env -i HOME="$HOME" PATH="$CLEAN_PATH" LANG=C.UTF-8 "$@"; }
clean sh -c 'command -v cargo rustc' && { echo "FAIL: the clean PATH still has cargo" >&2; exit 1; }

# has PATTERN CMD...: CMD's output matches. Not `CMD | grep -q`: grep -q stops reading at the first match,
# and under pipefail the writer's SIGPIPE would fail the pipeline.
has() { local pattern="$1" out; shift; out="$("$@")"; grep -q -- "$pattern" <<<"$out"; }

passed=0
pass() { passed=$((passed + 1)); echo "PASS: $*"; }
fail() { echo "FAIL: $*" >&2; echo "distribution: $passed passed, 1 failed"; exit 1; }

# The C program every C install is tried with: the README's example (decides one request).
cp "$REPO/tests/c/example.c" "$WORK/app.c"

# readme_shows TEXT: README.md shows TEXT verbatim, so what this script runs is what a reader types.
readme_shows() { grep -qF -- "$1" "$REPO/README.md" || fail "README.md no longer shows: $1"; }
# The README's C build commands (Install, C), for a make install and for the unpacked tarball alike; the
# shell that runs them expands them.
# shellcheck disable=SC2016
README_LIBDIR='libdir=$(pkg-config --variable=libdir ms_auth)'
# shellcheck disable=SC2016
README_CC_SHARED='cc app.c $(pkg-config --cflags --libs ms_auth) -Wl,-rpath,"$libdir" -o app'
# shellcheck disable=SC2016
README_CC_STATIC='cc app.c $(pkg-config --cflags ms_auth) "$libdir/libms_auth.a" -lpthread -ldl -lm -o app'
# readme_cc DIR PKG_CONFIG_PATH COMMAND: COMMAND run as a reader would, in DIR holding only app.c, with
# the README's PKG_CONFIG_PATH and nothing else in the environment; prints the program's path.
readme_cc() {
    local dir="$1" pcpath="$2" cmd="$3"
    readme_shows "$README_LIBDIR"
    readme_shows "$cmd"
    mkdir -p "$dir"
    cp "$WORK/app.c" "$dir/"
    (cd "$dir" && clean env PKG_CONFIG_PATH="$pcpath" sh -ec "$README_LIBDIR; $cmd") >&2 \
        || fail "the README's '$cmd' failed in $dir"
    echo "$dir/app"
}

# uses_cli BIN: a store made, a key created and checked by the installed CLI.
uses_cli() {
    local bin="$1" db="$WORK/cli-$RANDOM.db" key
    key="$(clean "$bin" --db "$db" key create --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')"
    clean "$bin" --db "$db" check "$key" >/dev/null || fail "$bin check of a fresh key"
    echo "$db $key"
}
# runs_app APP DB KEY [env...]: the C example answers 200 for the key, 401 without one.
runs_app() {
    local app="$1" db="$2" key="$3"; shift 3
    local out
    out="$(clean "$@" "$app" "$db" "$key" 2>&1)" || fail "$app did not run: $out"
    [[ "$out" == "200 "* ]] || fail "$app with a valid key answered: $out"
    out="$(clean "$@" "$app" "$db" 2>&1)" || fail "$app did not run: $out"
    [[ "$out" == '401 {"success":false,"error":{"code":"api_key_missing"'* ]] || fail "$app without a key answered: $out"
}

echo "== make install PREFIX=..."
PREFIX="$WORK/prefix"
make -C "$REPO" --no-print-directory -s install PREFIX="$PREFIX"
for f in bin/ms-auth include/ms_auth.h lib/libms_auth.a "lib/libms_auth.so.$VERSION" lib/libms_auth.so.1 \
         lib/libms_auth.so lib/pkgconfig/ms_auth.pc; do
    [ -e "$PREFIX/$f" ] || fail "make install did not install $f"
done
soname="$(readelf -d "$PREFIX/lib/libms_auth.so.$VERSION" | sed -n 's/.*SONAME.*\[\(.*\)\]/\1/p')"
[ "$soname" = libms_auth.so.1 ] || fail "soname is '$soname', not libms_auth.so.1"
pc() { clean env PKG_CONFIG_PATH="$1" pkg-config "${@:2}" ms_auth; }
[ "$(pc "$PREFIX/lib/pkgconfig" --modversion)" = "$VERSION" ] || fail "pkg-config --modversion"
cli_out="$(uses_cli "$PREFIX/bin/ms-auth")"
read -r db key <<<"$cli_out"
# shellcheck disable=SC2046 # word splitting of pkg-config's flags is meant
clean gcc -Wall -Werror -o "$WORK/app-prefix" "$WORK/app.c" $(pc "$PREFIX/lib/pkgconfig" --cflags --libs)
has 'NEEDED.*\[libms_auth.so.1\]' readelf -d "$WORK/app-prefix" || fail "app does not need libms_auth.so.1"
runs_app "$WORK/app-prefix" "$db" "$key" LD_LIBRARY_PATH="$PREFIX/lib"
readme_shows "make && sudo make install PREFIX=/usr/local"
app="$(readme_cc "$WORK/readme-prefix-shared" "$PREFIX/lib/pkgconfig" "$README_CC_SHARED")"
runs_app "$app" "$db" "$key"
app="$(readme_cc "$WORK/readme-prefix-static" "$PREFIX/lib/pkgconfig" "$README_CC_STATIC")"
runs_app "$app" "$db" "$key"
make -C "$REPO" --no-print-directory -s uninstall PREFIX="$PREFIX"
left="$(find "$PREFIX" -type f -o -type l)"
[ -z "$left" ] || fail "make uninstall left: $left"
pass "make install: header, libms_auth.a, libms_auth.so.$VERSION (soname libms_auth.so.1), ms_auth.pc, ms-auth; C app via pkg-config; the README's commands, shared and static, run as built; uninstall"

echo "== release tarball"
tarball="$DIST/ms-auth-$VERSION-x86_64-linux-gnu.tar.gz"
# As the README says, with $WORK/opt for /opt.
readme_shows "tar -xzf $(basename "$tarball") -C /opt"
readme_shows "export PKG_CONFIG_PATH=/opt/ms-auth-$VERSION-x86_64-linux-gnu/lib/pkgconfig"
mkdir -p "$WORK/opt"
tar -C "$WORK/opt" -xzf "$tarball"
T="$WORK/opt/ms-auth-$VERSION-x86_64-linux-gnu"
cli_out="$(uses_cli "$T/bin/ms-auth")"
read -r db key <<<"$cli_out"
# Relocatable: pkg-config answers paths inside wherever the tree was unpacked.
[ "$(pc "$T/lib/pkgconfig" --variable=includedir)" -ef "$T/include" ] || fail "tarball .pc includedir"
# shellcheck disable=SC2046
clean gcc -Wall -Werror -o "$WORK/app-shared" "$WORK/app.c" $(pc "$T/lib/pkgconfig" --cflags --libs)
runs_app "$WORK/app-shared" "$db" "$key" LD_LIBRARY_PATH="$T/lib"
# Static: the archive by path, then what pkg-config --static adds for it.
# shellcheck disable=SC2046
clean gcc -Wall -Werror -o "$WORK/app-static" "$WORK/app.c" $(pc "$T/lib/pkgconfig" --cflags) \
    "$T/lib/libms_auth.a" $(pc "$T/lib/pkgconfig" --static --libs-only-l | sed 's/-lms_auth//')
if has libms_auth readelf -d "$WORK/app-static"; then fail "static app needs a shared libms_auth"; fi
runs_app "$WORK/app-static" "$db" "$key"
# The README's commands, and the programs run as a reader runs them: no LD_LIBRARY_PATH, no ldconfig.
app="$(readme_cc "$WORK/readme-tar-shared" "$T/lib/pkgconfig" "$README_CC_SHARED")"
has 'NEEDED.*\[libms_auth.so.1\]' readelf -d "$app" || fail "the README's shared app does not need libms_auth.so.1"
runs_app "$app" "$db" "$key"
app="$(readme_cc "$WORK/readme-tar-static" "$T/lib/pkgconfig" "$README_CC_STATIC")"
if has libms_auth readelf -d "$app"; then fail "the README's static app needs a shared libms_auth"; fi
runs_app "$app" "$db" "$key"
pass "tarball ($(du -h "$tarball" | cut -f1)): CLI; C app shared and static through its relocatable ms_auth.pc; the README's commands, the programs run as built"

echo "== .deb"
deb="$DIST/ms-auth_${VERSION}-1_amd64.deb"
libdeb="$DIST/libms-auth1_${VERSION}-1_amd64.deb"
devdeb="$DIST/libms-auth-dev_${VERSION}-1_amd64.deb"
ngxdeb="$DIST/libnginx-mod-http-ms-auth_${VERSION}-1_amd64.deb"
ML=./usr/lib/x86_64-linux-gnu
# deb_has DEB PATH...: DEB ships each PATH, and no other package of the three does (one home per file).
deb_has() {
    local d="$1" other f; shift
    for f in "$@"; do
        grep -q " $f\( ->\|$\)" <<<"$(dpkg-deb --contents "$d")" || fail "$(basename "$d") lacks $f"
        for other in "$deb" "$libdeb" "$devdeb"; do
            [ "$other" = "$d" ] && continue
            if grep -q " $f\( ->\|$\)" <<<"$(dpkg-deb --contents "$other")"; then
                fail "$f is in $(basename "$other") as well as $(basename "$d")"
            fi
        done
    done
}
deb_has "$libdeb" "$ML/libms_auth.so.$VERSION" "$ML/libms_auth.so.1"
deb_has "$devdeb" ./usr/include/ms_auth.h "$ML/libms_auth.a" "$ML/libms_auth.so" "$ML/pkgconfig/ms_auth.pc"
deb_has "$deb" ./usr/bin/ms-auth ./usr/share/man/man1/ms-auth.1.gz ./usr/share/man/man1/ms-auth-key.1.gz \
    ./usr/share/bash-completion/completions/ms-auth ./usr/share/zsh/vendor-completions/_ms-auth \
    ./usr/share/fish/vendor_completions.d/ms-auth.fish ./usr/lib/systemd/system/ms-auth-fleet-sync@.service \
    ./usr/lib/systemd/system/ms-auth-console@.service
has "Package: libms-auth1" dpkg-deb --info "$libdeb" || fail "dpkg-deb --info $libdeb"
[ "$(dpkg-deb -f "$devdeb" Depends)" = "libms-auth1 (= $VERSION-1)" ] || fail "libms-auth-dev depends on: $(dpkg-deb -f "$devdeb" Depends)"
# lintian's errors fail the test; its warnings are printed.
lintian --tag-display-limit 0 "$deb" "$libdeb" "$devdeb" "$ngxdeb" | tee "$WORK/lintian.log" || true
if grep -q '^E: ' "$WORK/lintian.log"; then fail "lintian reports errors"; fi
D="$WORK/deb"
for d in "$deb" "$libdeb" "$devdeb"; do dpkg -x "$d" "$D"; done
cli_out="$(uses_cli "$D/usr/bin/ms-auth")"
read -r db key <<<"$cli_out"
pcd="$D/usr/lib/x86_64-linux-gnu/pkgconfig"
# The .pc names /usr (where dpkg -i puts it); pkg-config's sysroot maps that into the extracted tree.
# shellcheck disable=SC2046
clean gcc -Wall -Werror -o "$WORK/app-deb" "$WORK/app.c" \
    $(clean env PKG_CONFIG_PATH="$pcd" PKG_CONFIG_SYSROOT_DIR="$D" pkg-config --cflags --libs ms_auth)
runs_app "$WORK/app-deb" "$db" "$key" LD_LIBRARY_PATH="$D/usr/lib/x86_64-linux-gnu"
pass ".debs ms-auth ($(du -h "$deb" | cut -f1)), libms-auth1 ($(du -h "$libdeb" | cut -f1)), libms-auth-dev ($(du -h "$devdeb" | cut -f1)): each file in one package, lintian without errors, CLI and C app from dpkg -x"

echo "== nginx module .deb, installed with dpkg"
has "$(dpkg-query -W -f='${Provides}' nginx | grep -o 'nginx-abi-[^ ,]*')" dpkg-deb -f "$ngxdeb" Depends \
    || fail "module package does not depend on this nginx's ABI"
# Installed into this system for real, as an admin would (its postinst, prerm and postrm run, its trigger
# reaches Debian's nginx), and purged at the end, also when a check fails. Through apt-get, which waits
# for dpkg's lock that other jobs on this machine may hold. Only the module package: it needs nothing of
# ms-auth at run time, while an installed ms-auth package would give every other job on this machine a
# system libms_auth.so.1.
MODPKG=libnginx-mod-http-ms-auth
MODCONF=/usr/share/nginx/modules-available/mod-http-ms-auth.conf
MODLINK=/etc/nginx/modules-enabled/50-mod-http-ms-auth.conf
modstate() { dpkg-query -W -f='${db:Status-Status}' "$MODPKG" 2>/dev/null || true; }
case "$(modstate)" in
    "" | not-installed) ;;
    *) fail "$MODPKG is already on this machine ($(modstate)): this test installs and purges it; purge it first" ;;
esac
apt_dpkg() { # apt_dpkg APT-GET-ARGUMENTS...: the output in $WORK/apt.log
    MODULE_INSTALLED=1
    env DEBIAN_FRONTEND=noninteractive apt-get -y --no-install-recommends -o DPkg::Lock::Timeout=600 "$@" \
        >"$WORK/apt.log" 2>&1 || { cat "$WORK/apt.log" >&2; fail "apt-get $*"; }
}
triggered_reload() { grep -q '^Processing triggers for nginx ' "$WORK/apt.log"; }
is_enabled_link() { [ -L "$MODLINK" ] && [ "$(readlink "$MODLINK")" = "$MODCONF" ]; }
# The next release: the same package with a higher version, for a real upgrade.
dpkg-deb -R "$ngxdeb" "$WORK/ngx-next"
sed -i "s/^Version: .*/Version: $VERSION-2/" "$WORK/ngx-next/DEBIAN/control"
ngxnext="$WORK/${MODPKG}_$VERSION-2_amd64.deb"
dpkg-deb --root-owner-group -Zxz --build "$WORK/ngx-next" "$ngxnext" >/dev/null

apt_dpkg install "$ngxdeb"
is_enabled_link || fail "the first install did not enable the module: $(ls -l "$MODLINK" 2>&1)"
triggered_reload || fail "the first install did not trigger nginx-reload: $(cat "$WORK/apt.log")"

# Debian's nginx serves through the enabled module, from a store made as the README says (with
# $WORK/var-lib-ms-auth for /var/lib/ms-auth): by the workers' user, who also write its counters.
S="$WORK/var-lib-ms-auth"
readme_shows "install -d -o www-data -g www-data /var/lib/ms-auth"
readme_shows "runuser -u www-data -- ms-auth --db /var/lib/ms-auth/keys.db key create --plan pro"
chmod 0711 "$WORK" # www-data reaches the store and the extracted CLI, as it reaches /var/lib and /usr/bin
install -d -o www-data -g www-data "$S"
key="$(clean runuser -u www-data -- "$D/usr/bin/ms-auth" --db "$S/keys.db" key create --plan pro --json \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')"
N="$WORK/ngx"
mkdir -p "$N"
# A port the kernel just handed out, not a random guess: other test servers run on this machine too.
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
# Debian's prefix (no -p), so the enabled file's relative load_module finds /usr/lib/nginx/modules.
cat >"$N/nginx.conf" <<NGINX_CONF
include $MODLINK;
user www-data;
daemon off;
pid $N/nginx.pid;
error_log $N/error.log;
events {}
http {
    access_log off;
    client_body_temp_path $N/tmp; proxy_temp_path $N/tmp; fastcgi_temp_path $N/tmp;
    uwsgi_temp_path $N/tmp; scgi_temp_path $N/tmp;
    ms_auth_store $S/keys.db;
    server {
        listen 127.0.0.1:$port;
        location / { ms_auth on; return 200 "hello\n"; }
    }
}
NGINX_CONF
/usr/sbin/nginx -t -c "$N/nginx.conf" 2>"$WORK/nginx-t.log" || { cat "$WORK/nginx-t.log" >&2; fail "nginx -t"; }
/usr/sbin/nginx -c "$N/nginx.conf" &
NGINX_PID=$!
for _ in $(seq 100); do
    kill -0 "$NGINX_PID" 2>/dev/null || fail "nginx exited: $(tail -3 "$N/error.log" 2>/dev/null)"
    curl -s -o /dev/null "http://127.0.0.1:$port/" && break
    sleep 0.1
done
code="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/" || true)"
[ "$code" = 401 ] || fail "nginx without a key answered $code"
code="$(curl -s -o /dev/null -w '%{http_code}' -H "X-API-Key: $key" "http://127.0.0.1:$port/" || true)"
[ "$code" = 200 ] || fail "nginx with a key answered $code"
kill "$NGINX_PID"; wait "$NGINX_PID" 2>/dev/null || true; NGINX_PID=""

# What the admin did stays done, as with Debian's own libnginx-mod-* packages (dh_nginx): the module
# disabled (its link removed) stays disabled through an upgrade...
rm "$MODLINK"
apt_dpkg install "$ngxnext"
[ "$(dpkg-query -W -f='${Version}' "$MODPKG")" = "$VERSION-2" ] || fail "the upgrade did not happen"
if [ -e "$MODLINK" ] || [ -L "$MODLINK" ]; then fail "the upgrade enabled the module the admin had disabled"; fi
triggered_reload || fail "the upgrade did not trigger nginx-reload"
# ...and enabled by a file of the admin's own (an edited copy) keeps that file through a reinstall.
{ cat "$MODCONF"; echo "# edited by the admin"; } >"$MODLINK"
apt_dpkg install --reinstall "$ngxnext"
if [ -L "$MODLINK" ] || ! grep -qx '# edited by the admin' "$MODLINK"; then
    fail "the reinstall replaced the admin's $MODLINK: $(ls -l "$MODLINK" 2>&1)"
fi
# Removed, the module is disabled (its .so is gone); installed again, enabled again; purged, no trace.
ln -sf "$MODCONF" "$MODLINK"
apt_dpkg remove "$MODPKG"
if [ -e "$MODLINK" ] || [ -L "$MODLINK" ]; then fail "remove left the module enabled without its .so"; fi
triggered_reload || fail "remove did not trigger nginx-reload"
apt_dpkg install "$ngxnext"
is_enabled_link || fail "installed again after remove, the module is not enabled: $(ls -l "$MODLINK" 2>&1)"
apt_dpkg purge "$MODPKG"
left="$(find /etc/nginx/modules-enabled -name '*mod-http-ms-auth*')"
[ -z "$left" ] || fail "purge left $left"
case "$(modstate)" in "" | not-installed) ;; *) fail "after purge the package is $(modstate)" ;; esac
MODULE_INSTALLED=""
pass "module .deb with dpkg: enabled on first install; 401/200 in Debian's nginx from a store made by www-data; a disabled module and an admin's file kept through upgrade and reinstall; nginx-reload triggered; remove, install again, purge"

echo "== ms-auth, libms-auth1, libms-auth-dev installed with dpkg"
# Installed into this system for real, as the module is above, and purged at the end (also when a check
# fails: cleanup). For as short a time as the checks take: while installed, the system has a
# libms_auth.so.1 and an ms_auth.pc that other jobs on this machine could find.
PKGS=(ms-auth libms-auth1 libms-auth-dev)
for p in "${PKGS[@]}"; do
    case "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)" in
        "" | not-installed) ;;
        *) fail "$p is already on this machine: this test installs and purges it; purge it first" ;;
    esac
done
apt_dpkg install "$deb" "$libdeb" "$devdeb"
grep -q '^Processing triggers for libc-bin ' "$WORK/apt.log" || fail "installing libms-auth1 did not trigger ldconfig"
# (/lib or /usr/lib: the same directory on a merged-/usr system, and ldconfig names the first.)
has 'libms_auth.so.1 (libc6,x86-64) => \(/usr\)\?/lib/x86_64-linux-gnu/libms_auth.so.1$' ldconfig -p \
    || fail "the loader's cache does not know libms_auth.so.1"
installed="$(dpkg -L "${PKGS[@]}")"
# The CLI and a C program built against the installed -dev package as a Debian user builds it: no
# PKG_CONFIG_PATH, no rpath, no LD_LIBRARY_PATH.
cli_out="$(uses_cli /usr/bin/ms-auth)"
read -r db key <<<"$cli_out"
# shellcheck disable=SC2046
clean gcc -Wall -Werror -o "$WORK/app-system" "$WORK/app.c" $(clean pkg-config --cflags --libs ms_auth)
runs_app "$WORK/app-system" "$db" "$key"

# A man page for ms-auth and for each of its commands, found by man(1) through its index (the man-db
# trigger), rendered without a groff warning; a group's page shows its subcommands' options.
grep -q '^Processing triggers for man-db ' "$WORK/apt.log" || fail "installing ms-auth did not trigger man-db"
commands="$(clean ms-auth --help | sed -n '/^Commands:$/,/^$/s/^  \([a-z][a-z0-9-]*\) .*/\1/p' | grep -vx help)"
[ -n "$commands" ] || fail "ms-auth --help lists no commands"
pages=0
# shellcheck disable=SC2086 # one command a word
for page in ms-auth $(printf 'ms-auth-%s\n' $commands); do
    path="$(man -w 1 "$page" 2>/dev/null)" || fail "man finds no page $page(1)"
    [ "$path" = "/usr/share/man/man1/$page.1.gz" ] || fail "man finds $page(1) at $path"
    out="$(clean env MANPAGER=cat MANWIDTH=100 man --warnings 1 "$page" 2>"$WORK/man.err")" || fail "man $page failed: $(cat "$WORK/man.err")"
    [ ! -s "$WORK/man.err" ] || fail "man $page warns: $(cat "$WORK/man.err")"
    if ! grep -q "^NAME" <<<"$out" || ! grep -q "^SYNOPSIS" <<<"$out"; then fail "man $page has no NAME or SYNOPSIS: $out"; fi
    # Rendered from the file as well (man -l), as a reader of the extracted package would.
    has "^NAME" env MANPAGER=cat man -l "$path" || fail "man -l $path"
    pages=$((pages + 1))
done
has '^   ms-auth key create' env MANPAGER=cat MANWIDTH=100 man 1 ms-auth-key || fail "ms-auth-key(1) lacks ms-auth key create"
has '--secret-file' env MANPAGER=cat MANWIDTH=200 man 1 ms-auth-fleet || fail "ms-auth-fleet(1) lacks fleet sync's --secret-file"
has 'ms-auth-doctor(1)' env MANPAGER=cat MANWIDTH=200 man 1 ms-auth || fail "ms-auth(1) does not point to ms-auth-doctor(1)"
[ "$(grep -c '/usr/share/man/man1/ms-auth.*\.1\.gz$' <<<"$installed")" = "$pages" ] || fail "ms-auth ships man pages for commands its --help does not list"

# Completions where each shell looks for them; bash's completes a command and a subcommand for real.
for f in /usr/share/bash-completion/completions/ms-auth /usr/share/zsh/vendor-completions/_ms-auth \
         /usr/share/fish/vendor_completions.d/ms-auth.fish; do
    [ -s "$f" ] || fail "no completion $f"
done
grep -qx '#compdef ms-auth' /usr/share/zsh/vendor-completions/_ms-auth || fail "_ms-auth is no zsh completion"
grep -q '^complete -c ms-auth ' /usr/share/fish/vendor_completions.d/ms-auth.fish || fail "ms-auth.fish is no fish completion"
# shellcheck disable=SC2016
complete_bash='source /usr/share/bash-completion/completions/ms-auth
COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
func="$(complete -p ms-auth | sed -n "s/.*-F \([^ ]*\) .*/\1/p")"
"$func" ms-auth "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
printf "%s\n" "${COMPREPLY[@]}"'
[ "$(clean bash -c "$complete_bash" - ms-auth ke)" = key ] || fail "bash completes 'ms-auth ke' as: $(clean bash -c "$complete_bash" - ms-auth ke)"
has '^revoke$' clean bash -c "$complete_bash" - ms-auth key re || fail "bash does not complete 'ms-auth key re' to revoke"

# The systemd units: valid for systemd (verify checks the unit, its ExecStart binary and its man page),
# hardened (systemd's own exposure score, "OK" or better), installed but not enabled.
for unit in ms-auth-fleet-sync@keys.service ms-auth-console@keys.service; do
    out="$(systemd-analyze verify "$unit" 2>&1)" || fail "systemd-analyze verify $unit: $out"
    [ -z "$out" ] || fail "systemd-analyze verify $unit warns: $out"
    systemd-analyze security --offline=yes --threshold=20 "$unit" >"$WORK/security.log" 2>&1 \
        || fail "systemd-analyze security $unit: $(tail -3 "$WORK/security.log")"
done
left="$(find /etc/systemd -name 'ms-auth-*' 2>/dev/null)"
[ -z "$left" ] || fail "installing ms-auth enabled units: $left"

# Removed, the -dev package takes only its own files: the CLI and the shared library stay.
apt_dpkg remove libms-auth-dev
if [ -e /usr/include/ms_auth.h ] || [ -e /usr/lib/x86_64-linux-gnu/libms_auth.a ]; then fail "removing libms-auth-dev left its files"; fi
runs_app "$WORK/app-system" "$db" "$key"
# Purged, nothing of the three is left: no file, no package state, no cache entry, no man index entry.
# (The removed -dev package, which has no conffiles, dpkg has already forgotten; apt-get would not find it.)
apt_dpkg purge ms-auth libms-auth1
for p in "${PKGS[@]}"; do
    case "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)" in
        "" | not-installed) ;;
        *) fail "after purge $p is $(dpkg-query -W -f='${db:Status-Status}' "$p")" ;;
    esac
done
left=""
while IFS= read -r f; do
    # Directories other packages share (/usr/share/man/man1, ...) stay; anything ms-auth-named must not.
    if [ -e "$f" ] || [ -L "$f" ]; then
        if [ ! -d "$f" ] || [[ "$f" == *ms-auth* ]] || [[ "$f" == *ms_auth* ]]; then left+="$f "; fi
    fi
done <<<"$installed"
[ -z "$left" ] || fail "purge left: $left"
if has libms_auth ldconfig -p; then fail "after purge the loader's cache still has libms_auth"; fi
if man -w 1 ms-auth >/dev/null 2>&1; then fail "after purge man still finds ms-auth(1)"; fi
MODULE_INSTALLED=""
pass "ms-auth, libms-auth1, libms-auth-dev with dpkg: ldconfig and man-db triggered; CLI and a C app through the system's pkg-config; $pages man pages render without warnings; bash, zsh and fish completions (bash's tried); both units pass systemd-analyze verify and security, not enabled; -dev removed alone; purge leaves nothing"

echo "== Python wheel"
whl="$(ls "$DIST"/ms_auth-"$VERSION"-py3-none-manylinux_2_*_x86_64.whl)"
has 'ms_auth/_lib/libms_auth.so' python3 -m zipfile -l "$whl" || fail "the wheel has no libms_auth.so"
# auditwheel (PyPI's own rules for Linux wheels) must find the library consistent with the wheel's tag:
# only system libraries a manylinux platform guarantees, no newer glibc symbols than the tag says.
plat="$(basename "$whl" .whl)"; plat="${plat##*-}"
python3 -m venv "$WORK/audit-venv"
"$WORK/audit-venv/bin/pip" install -q --disable-pip-version-check "auditwheel>=6"
has "consistent with the following platform tag: \"$plat\"" sh -c '"$1" show "$2" 2>&1 | tr -s "\n " "  "' - \
    "$WORK/audit-venv/bin/auditwheel" "$whl" || fail "auditwheel does not confirm $plat for $(basename "$whl")"
# It ships a native library, so it is not purelib (installers put it in platlib) and says its platform.
wheel_meta="$(python3 -c 'import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
print(z.read(next(n for n in z.namelist() if n.endswith(".dist-info/WHEEL"))).decode())' "$whl")"
grep -qx 'Root-Is-Purelib: false' <<<"$wheel_meta" || fail "the wheel's WHEEL says: $wheel_meta"
[ "$(grep '^Tag: ' <<<"$wheel_meta")" = "Tag: py3-none-$plat" ] || fail "the wheel's WHEEL tags: $wheel_meta"
clean python3 -m venv "$WORK/venv"
clean "$WORK/venv/bin/pip" install -q --disable-pip-version-check --no-index "$whl"
# The README's one-liner, in an empty directory: an invalid key's status, printed as its code string.
readme_shows "$(basename "$whl")"
README_PY='import ms_auth; print(ms_auth.Store("keys.db").check("ms_live_x").status)'
readme_shows "venv/bin/python -c '$README_PY'"
mkdir -p "$WORK/pyreadme"
out="$(cd "$WORK/pyreadme" && clean "$WORK/venv/bin/python" -c "$README_PY")"
[ "$out" = api_key_invalid ] || fail "the README's Python one-liner printed '$out', not api_key_invalid"
mkdir -p "$WORK/pyapp"
cat >"$WORK/pyapp/app.py" <<'EOF'
"""A user's program after `pip install ms_auth-...whl`: a check, then the WSGI middleware."""
import io
import sys
from pathlib import Path
from wsgiref.util import setup_testing_defaults

import ms_auth
from ms_auth import Store
from ms_auth.wsgi import ApiKeyMiddleware

store = Store(sys.argv[1])
created = store.create_key(plan="pro", rate_limit=(60, 60_000))
assert store.check(created.key).http_status == 200
assert store.check("ms_live_nope").http_status == 401


def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello " + environ["ms_auth.key_id"].encode()]


app = ApiKeyMiddleware(hello, store)


def call(key):
    environ = {}
    setup_testing_defaults(environ)
    environ["wsgi.input"] = io.BytesIO()
    if key is not None:
        environ["HTTP_X_API_KEY"] = key
    got = {}
    body = b"".join(app(environ, lambda status, headers, exc=None: got.update(status=status, headers=headers)))
    return got["status"], dict(got["headers"]), body


status, headers, body = call(created.key)
assert status.startswith("200"), status
assert body == b"hello " + created.id.encode(), body
assert "RateLimit" in headers, headers
status, _, body = call(None)
assert status.startswith("401") and b"api_key_missing" in body, (status, body)
# The library came from the wheel, not from a build tree.
assert (Path(ms_auth.__file__).parent / "_lib" / "libms_auth.so").is_file()
print("python ok", created.id)
EOF
has '^python ok' sh -c 'cd "$1" && shift && exec "$@"' - "$WORK/pyapp" env -i HOME="$HOME" PATH="$CLEAN_PATH" LANG=C.UTF-8 "$WORK/venv/bin/python" app.py "$WORK/py.db" || fail "python app"
pass "wheel $(basename "$whl") ($(du -h "$whl" | cut -f1)): platlib with its platform tag, which auditwheel confirms; pip install in a fresh venv; the README's one-liner; check and WSGI middleware"

echo "== Go module"
mkdir -p "$WORK/gomod" "$WORK/goapp"
tar -C "$WORK/gomod" -xzf "$DIST/ms-auth-go-$VERSION.tar.gz"
cat >"$WORK/goapp/go.mod" <<EOF
module example.com/goapp

go 1.19

require github.com/ms-auth/ms-auth/bindings/go v$VERSION

replace github.com/ms-auth/ms-auth/bindings/go => $WORK/gomod/ms-auth-go-$VERSION
EOF
cat >"$WORK/goapp/main.go" <<'EOF'
// A user's program built from the release's Go module alone: a check, then the middleware.
package main

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"

	"github.com/ms-auth/ms-auth/bindings/go/msauth"
)

func main() {
	store, err := msauth.Open(os.Args[1])
	if err != nil {
		panic(err)
	}
	defer store.Close()
	created, err := store.CreateKey(msauth.KeySpec{Plan: "pro"})
	if err != nil {
		panic(err)
	}
	if r := store.CheckNow(created.Key); !r.OK() {
		panic(r.Status)
	}
	api := msauth.Middleware(store)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, _ := msauth.KeyIDFromContext(r.Context())
		fmt.Fprint(w, "hello ", id)
	}))
	for _, key := range []string{created.Key, ""} {
		req := httptest.NewRequest(http.MethodGet, "/", nil)
		if key != "" {
			req.Header.Set("X-API-Key", key)
		}
		w := httptest.NewRecorder()
		api.ServeHTTP(w, req)
		fmt.Println(w.Code, w.Body.String())
	}
}
EOF
# HOME's Go caches are the only state used; GOFLAGS/GOPROXY as a user without network would set them.
(cd "$WORK/goapp" && clean GOFLAGS=-mod=mod GOPROXY=off go build -o "$WORK/goapp/goapp" .) \
    || fail "go build of the consumer module"
if has libms_auth ldd "$WORK/goapp/goapp"; then fail "the Go program needs a shared libms_auth"; fi
out="$(clean "$WORK/goapp/goapp" "$WORK/go.db")"
grep -q '^200 hello ' <<<"$out" || fail "Go program with a key: $out"
grep -q '^401 {"success":false,"error":{"code":"api_key_missing"' <<<"$out" || fail "Go program without a key: $out"
pass "Go module ($(du -h "$DIST/ms-auth-go-$VERSION.tar.gz" | cut -f1)): go build through replace, offline, no cgo variables; static; 200/401"

echo "distribution: $passed passed, 0 failed"
