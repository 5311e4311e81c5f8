//go:build msauth_pkgconfig

package msauth

// Build with -tags msauth_pkgconfig to take the flags from pkg-config
// (bindings/go/ms_auth.pc.in, installed as ms_auth.pc on PKG_CONFIG_PATH).
// --static adds Libs.private (-lpthread -ldl -lm) for the static archive.

// #cgo pkg-config: --static ms_auth
import "C"
