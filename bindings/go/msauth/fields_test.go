package msauth

import (
	"runtime"
	"testing"
	"time"
)

// A check keeps the answer's fields as bytes: it allocates only the key id's
// string, never the fields' text or the 704-byte block the C call returns
// (which a C.GoString of an address inside it once moved to the heap on every
// check: 736 bytes and 3 allocations per check, a third of Go's throughput).
// The headers are still all there when asked for, also from a copy of the Result.
func TestCheckAllocatesNothingForTheFields(t *testing.T) {
	s := openTemp(t)
	c := mustCreate(t, s, KeySpec{
		Quota:     &Quota{Limit: 1_000_000, Period: Daily},
		RateLimit: Some(RateLimit{Limit: 1_000_000, Per: time.Second, Burst: 1_000_000}),
	}, t0)
	now := t0.Add(time.Second)
	r, err := s.CheckKey(c.Key, now)
	if !r.OK() {
		t.Fatal(r.Status, err)
	}
	copied := r
	h := copied.Headers()
	want := map[string]string{
		"RateLimit-Policy": `"quota";q=1000000;w=86400, "rate";q=1000000;w=1`,
		"RateLimit":        `"quota";r=999999;t=43199, "rate";r=999999;t=1`,
	}
	for name, value := range want {
		if got := h.Get(name); got != value {
			t.Errorf("%s = %q, want %q (all: %v)", name, got, value, h)
		}
	}
	if len(h) != 2 {
		t.Errorf("headers of an admitted check: %v", h)
	}

	const n = 2000
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := 0; i < n; i++ {
		if r, _ := s.CheckKey(c.Key, now); r.Status != StatusOK {
			t.Fatal(r.Status)
		}
	}
	runtime.ReadMemStats(&after)
	perCheck := float64(after.TotalAlloc-before.TotalAlloc) / n
	// The key id (24 bytes) and a few bytes of the runtime's; the fields
	// alone are ~90 bytes, the returned block 704.
	if perCheck > 64 {
		t.Errorf("a check allocates %.0f bytes, want at most 64", perCheck)
	}
}
