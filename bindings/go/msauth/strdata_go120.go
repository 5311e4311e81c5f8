//go:build go1.20

package msauth

import "unsafe"

// stringData is the address of a string's bytes, without a copy.
func stringData(s string) *byte { return unsafe.StringData(s) }
