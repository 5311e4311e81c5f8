# Builds and installs ms-auth for C users the way cargo-c's `cargo cinstall` would: the header, the static
# and the shared library (with a soname), ms_auth.pc and the ms-auth binary.
#
#   make                                   # cargo build --release
#   make install PREFIX=/opt/ms-auth       # or DESTDIR=/tmp/stage PREFIX=/usr LIBDIR=/usr/lib/x86_64-linux-gnu
#   make uninstall PREFIX=/opt/ms-auth
#   make dist                              # tarball, .debs, wheel and Go module under target/dist (packaging/build.sh)
#
# Why not cargo-c itself: Debian 12's cargo-c (0.9.14) embeds a cargo that cannot read this project's
# lockfile (version 4), and building a current cargo-c from crates.io compiles all of cargo (10+ minutes
# on CI's two cores, on every fresh machine). This file does the same few steps: patchelf gives the
# shared library the soname cargo-c would (libms_auth.so.1: the ABI's major version).

PREFIX     ?= /usr/local
BINDIR     ?= $(PREFIX)/bin
LIBDIR     ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
# RELOCATABLE=1 writes prefix=${pcfiledir}/../.. into ms_auth.pc, for a tree that may be unpacked anywhere
# (the release tarball); it assumes the default LIBDIR layout.
RELOCATABLE ?=
DESTDIR    ?=
CARGO      ?= cargo
TARGET_DIR ?= target/release

VERSION := $(shell sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n1)
ABI_MAJOR := 1
SONAME := libms_auth.so.$(ABI_MAJOR)

BUILT := $(TARGET_DIR)/libms_auth.a $(TARGET_DIR)/libms_auth.so $(TARGET_DIR)/ms-auth

.PHONY: all build install uninstall dist
all: build

build:
	$(CARGO) build --release

# Built when missing, not rebuilt: `make && sudo make install` must not run cargo as root.
$(BUILT):
	$(CARGO) build --release

install: $(BUILT)
	@command -v patchelf >/dev/null || { echo "make install needs patchelf (apt-get install patchelf) to set the soname" >&2; exit 1; }
	install -d "$(DESTDIR)$(BINDIR)" "$(DESTDIR)$(LIBDIR)" "$(DESTDIR)$(INCLUDEDIR)" "$(DESTDIR)$(PKGCONFIGDIR)"
	install -m 0755 $(TARGET_DIR)/ms-auth "$(DESTDIR)$(BINDIR)/ms-auth"
	install -m 0644 include/ms_auth.h "$(DESTDIR)$(INCLUDEDIR)/ms_auth.h"
	install -m 0644 $(TARGET_DIR)/libms_auth.a "$(DESTDIR)$(LIBDIR)/libms_auth.a"
	install -m 0755 $(TARGET_DIR)/libms_auth.so "$(DESTDIR)$(LIBDIR)/libms_auth.so.$(VERSION)"
	patchelf --set-soname $(SONAME) "$(DESTDIR)$(LIBDIR)/libms_auth.so.$(VERSION)"
	ln -sf libms_auth.so.$(VERSION) "$(DESTDIR)$(LIBDIR)/$(SONAME)"
	ln -sf $(SONAME) "$(DESTDIR)$(LIBDIR)/libms_auth.so"
	sed -e 's|@PREFIX@|$(if $(RELOCATABLE),$${pcfiledir}/../..,$(PREFIX))|' \
	    -e 's|@LIBDIR@|$(if $(RELOCATABLE),$${prefix}/lib,$(LIBDIR))|' \
	    -e 's|@INCLUDEDIR@|$(if $(RELOCATABLE),$${prefix}/include,$(INCLUDEDIR))|' \
	    -e 's|@VERSION@|$(VERSION)|' packaging/ms_auth.pc.in > "$(DESTDIR)$(PKGCONFIGDIR)/ms_auth.pc"
	chmod 0644 "$(DESTDIR)$(PKGCONFIGDIR)/ms_auth.pc"

uninstall:
	rm -f "$(DESTDIR)$(BINDIR)/ms-auth" "$(DESTDIR)$(INCLUDEDIR)/ms_auth.h" "$(DESTDIR)$(LIBDIR)/libms_auth.a" \
	      "$(DESTDIR)$(LIBDIR)/libms_auth.so" "$(DESTDIR)$(LIBDIR)/$(SONAME)" \
	      "$(DESTDIR)$(LIBDIR)/libms_auth.so.$(VERSION)" "$(DESTDIR)$(PKGCONFIGDIR)/ms_auth.pc"

dist:
	bash packaging/build.sh
