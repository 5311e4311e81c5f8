//go:build go1.21

package msauth

import "unsafe"

// stringData is the address of a string's bytes, without a copy.
// (go1.21, not go1.20: from Go 1.21 a //go:build go1.N line raises the file's
// language version above go.mod's "go 1.19"; Go 1.20 would refuse
// unsafe.StringData under go.mod's 1.19 and takes the other file.)
func stringData(s string) *byte { return unsafe.StringData(s) }
