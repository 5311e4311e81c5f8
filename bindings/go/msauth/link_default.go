//go:build !msauth_pkgconfig

package msauth

// Default link, static, with no environment: first the library shipped inside
// the module (the release's Go module, made by packaging/build.sh, carries
// include/ms_auth.h and lib/linux_amd64/libms_auth.a next to this file, as
// wasmtime-go does, so `go build` needs no cargo), then the repository layout
// (SRCDIR is bindings/go/msauth, so ../../.. is the repository root); the
// linker takes the first directory that has the archive. -l:libms_auth.a names
// the archive file itself, so the linker can never pick libms_auth.so.
// CGO_CFLAGS / CGO_LDFLAGS from the environment come BEFORE these flags, so
//   CGO_CFLAGS="-I/opt/ms-auth/include" CGO_LDFLAGS="-L/opt/ms-auth/lib"
// makes the compiler and linker find an install elsewhere first.
// The Rust standard library inside the archive needs -lpthread -ldl -lm after it.

// #cgo CFLAGS: -I${SRCDIR}/include -I${SRCDIR}/../../../include
// #cgo linux,amd64 LDFLAGS: -L${SRCDIR}/lib/linux_amd64
// #cgo LDFLAGS: -L${SRCDIR}/../../../target/release -l:libms_auth.a -lpthread -ldl -lm
import "C"
