//go:build !msauth_pkgconfig

package msauth

// Default link: the repository layout, statically. SRCDIR is bindings/go/msauth,
// so ../../.. is the repository root. -l:libms_auth.a names the archive file
// itself, so the linker can never pick libms_auth.so from the same directory.
// CGO_CFLAGS / CGO_LDFLAGS from the environment come BEFORE these flags, so
//   CGO_CFLAGS="-I/opt/ms-auth/include" CGO_LDFLAGS="-L/opt/ms-auth/lib"
// makes the compiler and linker find an install elsewhere first.
// The Rust standard library inside the archive needs -lpthread -ldl -lm after it.

// #cgo CFLAGS: -I${SRCDIR}/../../../include
// #cgo LDFLAGS: -L${SRCDIR}/../../../target/release -l:libms_auth.a -lpthread -ldl -lm
import "C"
