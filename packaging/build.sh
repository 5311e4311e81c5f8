#!/usr/bin/env bash
# Builds every release artifact of ms-auth into target/dist, from one `cargo build --release`:
#   ms-auth-VERSION-x86_64-linux-gnu.tar.gz   bin/ include/ lib/ (static, shared, ms_auth.pc) share/
#   ms-auth_VERSION-1_amd64.deb                 the CLI, its man pages, completions and systemd units
#   libms-auth1_VERSION-1_amd64.deb             the shared library (multiarch libdir)
#   libms-auth-dev_VERSION-1_amd64.deb          header, ms_auth.pc, static archive, libms_auth.so link
#   libnginx-mod-http-ms-auth_VERSION-1_amd64.deb  the nginx module built against Debian's nginx
#   ms_auth-VERSION-py3-none-manylinux_2_N_x86_64.whl  the Python package with libms_auth.so inside
#   ms-auth-go-VERSION.tar.gz                   the Go module with libms_auth.a for linux/amd64 inside
# packaging/test.sh installs each into a clean place and uses it. Installs what it needs (apt) itself.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
VERSION="$(sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n1)"
DIST="$REPO/target/dist"
say() { echo "packaging: $*" >&2; }
# Dates inside the packages (the Debian changelog) are the commit's, so a rebuild is the same.
SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}"

# patchelf sets the shared library's soname (see Makefile); binutils' strip shrinks the archives;
# dpkg-dev knows the multiarch directory; help2man writes the man pages; python3-venv builds the wheel in
# a venv of its own.
need=()
command -v patchelf >/dev/null || need+=(patchelf)
command -v strip >/dev/null || need+=(binutils)
command -v dpkg-architecture >/dev/null || need+=(dpkg-dev)
command -v make >/dev/null || need+=(make)
command -v help2man >/dev/null || need+=(help2man)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi

cargo build --release --quiet
rm -rf "$DIST"
mkdir -p "$DIST"
STAGE="$DIST/stage"

# Release builds keep debug info and symbols (for backtraces in the repository's own tests); the shipped
# copies are stripped as Debian's dh_strip does: the archive of its debug info only (52 MB -> 40 MB;
# what a caller links is unchanged), the shared library and the binary of everything that is not needed
# to load or run them (a library's exported functions are in .dynsym, which stays).
LIBS="$STAGE/libs"
mkdir -p "$LIBS"
install -m 0644 target/release/libms_auth.a "$LIBS/libms_auth.a"
strip --strip-debug "$LIBS/libms_auth.a"
install -m 0755 target/release/libms_auth.so "$LIBS/libms_auth.so"
strip --strip-unneeded --remove-section=.comment --remove-section=.note "$LIBS/libms_auth.so"
install -m 0755 target/release/ms-auth "$LIBS/ms-auth"
strip --remove-section=.comment --remove-section=.note "$LIBS/ms-auth"
install_to() { # install_to DESTDIR PREFIX [make variables...]: the Makefile's install from the stripped copies
    local dest="$1" prefix="$2"; shift 2
    make --no-print-directory -s install TARGET_DIR="$LIBS" DESTDIR="$dest" PREFIX="$prefix" "$@"
}

# --- tarball: a relocatable prefix (ms_auth.pc finds its directory through ${pcfiledir})
name="ms-auth-$VERSION-x86_64-linux-gnu"
install_to "$STAGE/tar/$name" "" RELOCATABLE=1
install -d "$STAGE/tar/$name/share/doc/ms-auth"
install -m 0644 README.md "$STAGE/tar/$name/share/doc/ms-auth/README.md"
tar -C "$STAGE/tar" --owner=0 --group=0 -czf "$DIST/$name.tar.gz" "$name"
say "built $DIST/$name.tar.gz"

# --- .deb: Debian's split for a C library with a CLI: libms-auth1 (the shared library, named for its
# soname), libms-auth-dev (header, ms_auth.pc, the 40 MB static archive and the libms_auth.so link a
# linker looks for) and ms-auth (the CLI, which links the library statically, with its man pages, shell
# completions and systemd units); and one for the nginx module, tied to the nginx ABI it was built
# against, as Debian's own libnginx-mod-* packages are.
ARCH="$(dpkg-architecture -qDEB_HOST_ARCH)"
MULTIARCH="$(dpkg-architecture -qDEB_HOST_MULTIARCH)"
DEBREV=1
deb_doc() { # deb_doc ROOT PACKAGE: the copyright and changelog Debian policy asks every package for
    local doc="$1/usr/share/doc/$2"
    install -d "$doc"
    {
        echo "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/"
        echo "Upstream-Name: ms-auth"
        echo
        echo "Files: *"
        echo "Copyright: 2026 ms-auth authors"
        echo "License: MIT"
    } >"$doc/copyright"
    printf '%s (%s-%s) unstable; urgency=medium\n\n  * Release %s.\n\n -- ms-auth maintainers <maintainers@ms-auth.invalid>  %s\n' \
        "$2" "$VERSION" "$DEBREV" "$VERSION" "$(date -R -u -d @"$SOURCE_DATE_EPOCH")" | gzip -9n >"$doc/changelog.Debian.gz"
}
deb_build() { # deb_build ROOT: control file already in ROOT/DEBIAN
    local root="$1" pkg
    pkg="$(sed -n 's/^Package: //p' "$root/DEBIAN/control")"
    (cd "$root" && find . -path ./DEBIAN -prune -o -type f -print | sed 's|^\./||' | LC_ALL=C sort | xargs md5sum) >"$root/DEBIAN/md5sums"
    dpkg-deb --root-owner-group -Zxz --build "$root" "$DIST/${pkg}_$VERSION-${DEBREV}_$ARCH.deb" >/dev/null
    say "built $DIST/${pkg}_$VERSION-${DEBREV}_$ARCH.deb"
}
# deb_move FROM TO PATH...: PATHs (relative to the roots) from one package's tree to another's.
deb_move() {
    local from="$1" to="$2" path; shift 2
    for path in "$@"; do
        install -d "$(dirname "$to/$path")"
        mv "$from/$path" "$to/$path"
    done
}
# The Makefile's install is the one list of what goes where; its tree is then divided among the packages.
ALL="$STAGE/deb/all"
install_to "$ALL" /usr LIBDIR="/usr/lib/$MULTIARCH"
LIBDIR="usr/lib/$MULTIARCH"
LIBPKG=libms-auth1
DEVPKG=libms-auth-dev

ROOT="$STAGE/deb/$LIBPKG"
deb_move "$ALL" "$ROOT" "$LIBDIR/libms_auth.so.$VERSION" "$LIBDIR/libms_auth.so.1"
# Debian policy 8.1: shared libraries are not executable.
chmod 0644 "$ROOT/$LIBDIR/libms_auth.so.$VERSION"
deb_doc "$ROOT" "$LIBPKG"
mkdir -p "$ROOT/DEBIAN"
# The loader's cache learns of the library on install, and dpkg-shlibdeps of packages linking it finds
# which package and version provide libms_auth.so.1.
echo "activate-noawait ldconfig" >"$ROOT/DEBIAN/triggers"
echo "libms_auth 1 $LIBPKG (>= $VERSION)" >"$ROOT/DEBIAN/shlibs"
cat >"$ROOT/DEBIAN/control" <<EOF
Package: $LIBPKG
Source: ms-auth
Version: $VERSION-$DEBREV
Architecture: $ARCH
Multi-Arch: same
Maintainer: ms-auth maintainers <maintainers@ms-auth.invalid>
Installed-Size: $(du -sk "$ROOT/usr" | cut -f1)
Depends: libc6 (>= 2.34), libgcc-s1 (>= 4.2)
Section: libs
Priority: optional
Homepage: https://github.com/ms-auth/ms-auth
Description: embedded single-file API-key store and policy engine - shared library
 Decides API-key requests in-process from one SQLite file that every host
 shares: missing, invalid, expired, revoked, quota exceeded, rate limited or
 admitted.
 .
 This package holds the shared library libms_auth.so.1.
EOF
deb_build "$ROOT"

ROOT="$STAGE/deb/$DEVPKG"
deb_move "$ALL" "$ROOT" usr/include/ms_auth.h "$LIBDIR/libms_auth.a" "$LIBDIR/libms_auth.so" \
    "$LIBDIR/pkgconfig/ms_auth.pc"
deb_doc "$ROOT" "$DEVPKG"
mkdir -p "$ROOT/DEBIAN"
cat >"$ROOT/DEBIAN/control" <<EOF
Package: $DEVPKG
Source: ms-auth
Version: $VERSION-$DEBREV
Architecture: $ARCH
Multi-Arch: same
Maintainer: ms-auth maintainers <maintainers@ms-auth.invalid>
Installed-Size: $(du -sk "$ROOT/usr" | cut -f1)
Depends: $LIBPKG (= $VERSION-$DEBREV)
Section: libdevel
Priority: optional
Homepage: https://github.com/ms-auth/ms-auth
Description: embedded single-file API-key store and policy engine - development files
 Decides API-key requests in-process from one SQLite file that every host
 shares: missing, invalid, expired, revoked, quota exceeded, rate limited or
 admitted.
 .
 This package holds the C header ms_auth.h, the pkg-config file ms_auth.pc,
 the static library and the link to the shared one.
EOF
deb_build "$ROOT"

ROOT="$STAGE/deb/ms-auth"
deb_move "$ALL" "$ROOT" usr/bin/ms-auth
left="$(cd "$ALL" && find . -type f -o -type l)"
[ -z "$left" ] || { say "make install put files no package takes: $left"; exit 1; }
# Man pages and completions are generated from the binary being packaged (clap's own --help and
# completion scripts), so they describe exactly this CLI.
bash packaging/manpages.sh "$LIBS/ms-auth" "$ROOT/usr/share/man/man1" "$VERSION"
install -d "$ROOT/usr/share/bash-completion/completions" "$ROOT/usr/share/zsh/vendor-completions" \
    "$ROOT/usr/share/fish/vendor_completions.d"
"$LIBS/ms-auth" completions bash >"$ROOT/usr/share/bash-completion/completions/ms-auth"
"$LIBS/ms-auth" completions zsh >"$ROOT/usr/share/zsh/vendor-completions/_ms-auth"
"$LIBS/ms-auth" completions fish >"$ROOT/usr/share/fish/vendor_completions.d/ms-auth.fish"
chmod 0644 "$ROOT"/usr/share/bash-completion/completions/ms-auth "$ROOT"/usr/share/zsh/vendor-completions/_ms-auth \
    "$ROOT"/usr/share/fish/vendor_completions.d/ms-auth.fish
# Templates per store (ms-auth-console@keys serves /var/lib/ms-auth/keys.db); installed, never enabled or
# started by the package: each needs a secret or tokens only the admin can provide.
install -d "$ROOT/usr/lib/systemd/system"
install -m 0644 packaging/systemd/ms-auth-fleet-sync@.service packaging/systemd/ms-auth-console@.service \
    "$ROOT/usr/lib/systemd/system/"
deb_doc "$ROOT" ms-auth
install -m 0644 README.md "$ROOT/usr/share/doc/ms-auth/README.md"
mkdir -p "$ROOT/DEBIAN"
cat >"$ROOT/DEBIAN/control" <<EOF
Package: ms-auth
Version: $VERSION-$DEBREV
Architecture: $ARCH
Maintainer: ms-auth maintainers <maintainers@ms-auth.invalid>
Installed-Size: $(du -sk "$ROOT/usr" | cut -f1)
Depends: libc6 (>= 2.34), libgcc-s1 (>= 4.2)
Section: net
Priority: optional
Homepage: https://github.com/ms-auth/ms-auth
Description: embedded single-file API-key store and policy engine - command line
 Decides API-key requests in-process from one SQLite file that every host
 shares: missing, invalid, expired, revoked, quota exceeded, rate limited or
 admitted.
 .
 This package holds the ms-auth command (keys, plans, policies, usage, the
 fleet agent, the support console, doctor), its manual pages, its bash, zsh
 and fish completions, and systemd unit templates for the fleet agent and
 the console (not enabled).
EOF
deb_build "$ROOT"

# The nginx module: bindings/nginx/build.sh builds it against the installed Debian nginx (nginx-dev),
# linking the static archive, so the module needs nothing of ms-auth at run time.
bash bindings/nginx/build.sh >&2
NGINX_ABI="$(dpkg-query -W -f='${Provides}' nginx | tr ',' '\n' | sed -n 's/^ *\(nginx-abi-[^ ]*\).*/\1/p')"
[ -n "$NGINX_ABI" ] || { say "Debian's nginx provides no nginx-abi-*"; exit 1; }
ROOT="$STAGE/deb/libnginx-mod-http-ms-auth"
install -d "$ROOT/usr/lib/nginx/modules" "$ROOT/usr/share/nginx/modules-available" "$ROOT/DEBIAN"
install -m 0644 target/nginx/ngx_http_ms_auth_module.so "$ROOT/usr/lib/nginx/modules/"
strip --strip-unneeded --remove-section=.comment --remove-section=.note "$ROOT/usr/lib/nginx/modules/ngx_http_ms_auth_module.so"
echo 'load_module modules/ngx_http_ms_auth_module.so;' >"$ROOT/usr/share/nginx/modules-available/mod-http-ms-auth.conf"
deb_doc "$ROOT" libnginx-mod-http-ms-auth
install -m 0644 bindings/nginx/README.md "$ROOT/usr/share/doc/libnginx-mod-http-ms-auth/README.md"
# Enabled as Debian's own libnginx-mod-* packages are (dh_nginx): the link in modules-enabled is made on
# the first install only, so an upgrade or reinstall leaves modules-enabled as the admin left it (a
# module they disabled stays disabled, a file of their own in place of the link stays). A remove moves
# the link aside (the .so goes) and installing again puts it back; a purge deletes it. Hand edits go in
# /etc/nginx/modules-enabled: the file under /usr/share is the package's, replaced on upgrade (Debian
# policy 10.7.2: conffiles live in /etc only). Each change reloads a running nginx through the
# nginx-reload trigger, which Debian's nginx package declares interest in.
echo "activate-noawait nginx-reload" >"$ROOT/DEBIAN/triggers"
cat >"$ROOT/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
available=/usr/share/nginx/modules-available/mod-http-ms-auth.conf
enabled=/etc/nginx/modules-enabled/50-mod-http-ms-auth.conf
case "$1" in
configure | abort-remove | abort-deconfigure)
    if [ -L "$enabled.removed" ]; then
        # Disabled by this package's own remove or deconfigure (prerm): enabled again, unless the admin
        # has put something in its place since.
        if [ -e "$enabled" ] || [ -L "$enabled" ]; then
            rm "$enabled.removed"
        else
            mv "$enabled.removed" "$enabled"
        fi
    elif [ "$1" = configure ] && [ -z "$2" ] && [ -d "${enabled%/*}" ] && [ ! -e "$enabled" ] && [ ! -L "$enabled" ]; then
        # $2, the version configured before, is empty only on a first install.
        ln -s "$available" "$enabled"
    fi
    ;;
esac
EOF
cat >"$ROOT/DEBIAN/prerm" <<'EOF'
#!/bin/sh
set -e
enabled=/etc/nginx/modules-enabled/50-mod-http-ms-auth.conf
# The module's .so is about to go: nginx must not load it. Kept aside for an install that follows.
if { [ "$1" = remove ] || [ "$1" = deconfigure ]; } && [ -L "$enabled" ]; then
    mv "$enabled" "$enabled.removed"
fi
EOF
cat >"$ROOT/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
enabled=/etc/nginx/modules-enabled/50-mod-http-ms-auth.conf
# Links are the package's to delete; a file the admin wrote in their place is theirs.
if [ "$1" = purge ]; then
    for link in "$enabled" "$enabled.removed"; do
        if [ -L "$link" ]; then
            rm "$link"
        fi
    done
fi
EOF
chmod 0755 "$ROOT/DEBIAN/postinst" "$ROOT/DEBIAN/prerm" "$ROOT/DEBIAN/postrm"
cat >"$ROOT/DEBIAN/control" <<EOF
Package: libnginx-mod-http-ms-auth
Version: $VERSION-$DEBREV
Architecture: $ARCH
Maintainer: ms-auth maintainers <maintainers@ms-auth.invalid>
Installed-Size: $(du -sk "$ROOT/usr" | cut -f1)
Depends: $NGINX_ABI, libc6 (>= 2.34), libgcc-s1 (>= 4.2)
Recommends: ms-auth (= $VERSION-$DEBREV)
Section: httpd
Priority: optional
Homepage: https://github.com/ms-auth/ms-auth
Description: ms-auth API-key checks for Debian's nginx
 ngx_http_ms_auth_module decides each request in the nginx worker against an
 ms-auth store (ms_auth on; ms_auth_store PATH;), with the documented 401/429
 answers. Built against Debian's nginx and linked statically to libms_auth.
EOF
deb_build "$ROOT"

# --- Python wheel: the binding with libms_auth.so in ms_auth/_lib. The library is loaded with ctypes, not
# as an extension module, so one wheel serves every Python 3 (py3-none); its platform tag is manylinux_2_N
# for the newest glibc symbol version the library uses (PEP 600), which packaging/test.sh has auditwheel
# confirm, so the wheel is one PyPI would take. setuptools sees no extension module and calls the wheel
# pure; it is not (it holds a native library), so its WHEEL says Root-Is-Purelib: false and installers
# put it in platlib, as they do any platform wheel.
PYBUILD="$STAGE/python"
cp -a bindings/python "$PYBUILD"
rm -rf "$PYBUILD/build" "$PYBUILD"/src/*.egg-info "$PYBUILD/tests" "$PYBUILD/bench.py"
install -m 0755 "$LIBS/libms_auth.so" "$PYBUILD/src/ms_auth/_lib/libms_auth.so"
VENV="$REPO/target/dist-venv"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check "setuptools>=69" "wheel>=0.42"
"$VENV/bin/pip" wheel -q --disable-pip-version-check --no-deps --no-build-isolation -w "$STAGE/wheel" "$PYBUILD"
whl="$(ls "$STAGE"/wheel/ms_auth-"$VERSION"-*.whl)"
glibc_minor="$(objdump -T "$LIBS/libms_auth.so" | grep -o 'GLIBC_2\.[0-9]*' | cut -d. -f2 | sort -n | tail -n1)"
plat="manylinux_2_${glibc_minor}_x86_64"
"$VENV/bin/python" -m wheel unpack -d "$STAGE/wheel/unpacked" "$whl" >/dev/null
wheel_meta="$STAGE/wheel/unpacked/ms_auth-$VERSION/ms_auth-$VERSION.dist-info/WHEEL"
# In place: the headers end at a blank line. The one tag replaces setuptools' (py3-none-any).
awk -v tag="Tag: py3-none-$plat" '
    /^Root-Is-Purelib: / { print "Root-Is-Purelib: false"; next }
    /^Tag: / { if (!tagged) print tag; tagged = 1; next }
    { print }' "$wheel_meta" >"$wheel_meta.new"
mv "$wheel_meta.new" "$wheel_meta"
grep -qx 'Root-Is-Purelib: false' "$wheel_meta" || { say "no Root-Is-Purelib line in $wheel_meta"; exit 1; }
# wheel pack names the file from the WHEEL's tag and rewrites RECORD.
"$VENV/bin/python" -m wheel pack -d "$DIST" "$STAGE/wheel/unpacked/ms_auth-$VERSION" >/dev/null
[ -f "$DIST/ms_auth-$VERSION-py3-none-$plat.whl" ] || { say "wheel pack did not write the py3-none-$plat wheel"; exit 1; }
say "built $DIST/ms_auth-$VERSION-py3-none-$plat.whl"

# --- Go module: bindings/go with the header and the static archive inside (link_default.go looks in
# include/ and lib/linux_amd64/ first), so `go build` needs neither cargo nor CGO_* variables.
GOMOD="$STAGE/go/ms-auth-go-$VERSION"
mkdir -p "$GOMOD/msauth/include" "$GOMOD/msauth/lib/linux_amd64"
cp bindings/go/go.mod bindings/go/README.md "$GOMOD/"
find bindings/go/msauth -maxdepth 1 -name '*.go' ! -name '*_test.go' -exec cp {} "$GOMOD/msauth/" \;
install -m 0644 include/ms_auth.h "$GOMOD/msauth/include/"
install -m 0644 "$LIBS/libms_auth.a" "$GOMOD/msauth/lib/linux_amd64/"
tar -C "$STAGE/go" --owner=0 --group=0 -czf "$DIST/ms-auth-go-$VERSION.tar.gz" "ms-auth-go-$VERSION"
say "built $DIST/ms-auth-go-$VERSION.tar.gz"

ls -l "$DIST"/*.tar.gz "$DIST"/*.deb "$DIST"/*.whl
