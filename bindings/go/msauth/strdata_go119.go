//go:build !go1.21

package msauth

import (
	"reflect"
	"unsafe"
)

// stringData is the address of a string's bytes, without a copy. Go 1.19
// (Debian 12) has no unsafe.StringData; reading Data through a
// *reflect.StringHeader that points at a real string is the documented
// pattern (rule 6 of package unsafe), and checkptr exempts it.
func stringData(s string) *byte {
	return (*byte)(unsafe.Pointer((*reflect.StringHeader)(unsafe.Pointer(&s)).Data))
}
