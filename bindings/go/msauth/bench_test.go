package msauth

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// hotKey is a valid key with no quota and no rate limit, so every check is a
// full admitted check (lookup, decision, counters written), never a shortcut.
func hotKey(b *testing.B) (*Store, string) {
	s := openTemp(b)
	c := mustCreate(b, s, KeySpec{RateLimit: Null[RateLimit]()}, time.Now())
	if r, _ := s.CheckKeyNow(c.Key); !r.OK() {
		b.Fatal(r.Status)
	}
	return s, c.Key
}

func BenchmarkCheckHot(b *testing.B) {
	s, key := hotKey(b)
	now := time.Now()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if r, _ := s.CheckKey(key, now); r.Status != StatusOK {
			b.Fatal(r.Status)
		}
	}
}

// BenchmarkCheckLimited is a hot key with a quota and a rate limit too large to
// refuse, so every check also carries the answer's RateLimit fields: the
// common case behind an API gateway, and the one where the fields cost.
func BenchmarkCheckLimited(b *testing.B) {
	s := openTemp(b)
	c := mustCreate(b, s, KeySpec{
		Quota:     &Quota{Limit: 1_000_000_000_000, Period: Monthly},
		RateLimit: Some(RateLimit{Limit: 1_000_000_000, Per: time.Second, Burst: 1_000_000_000}),
	}, time.Now())
	now := time.Now()
	if r, _ := s.CheckKey(c.Key, now); !r.OK() || r.Headers().Get("RateLimit") == "" {
		b.Fatal(r.Status, r.Headers())
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if r, _ := s.CheckKey(c.Key, now); r.Status != StatusOK {
			b.Fatal(r.Status)
		}
	}
}

func BenchmarkCheckHotParallel(b *testing.B) {
	s, key := hotKey(b)
	now := time.Now()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if r, _ := s.CheckKey(key, now); r.Status != StatusOK {
				b.Error(r.Status)
				return
			}
		}
	})
}

// BenchmarkCheckInC is the same check looped inside C: the library's cost
// without the binding (cgo crossing, result copy, strings).
func BenchmarkCheckInC(b *testing.B) {
	s, key := hotKey(b)
	now := time.Now()
	b.ResetTimer()
	s.mu.RLock()
	st := cCheckLoop(s.h, key, now.UnixMilli(), b.N)
	s.mu.RUnlock()
	if st != StatusOK {
		b.Fatal(st)
	}
}

// BenchmarkCgoBaseline is the floor: one cgo call to a trivial C function
// (ms_status_http), to set the check's cost against the crossing itself.
func BenchmarkCgoBaseline(b *testing.B) {
	for i := 0; i < b.N; i++ {
		if cStatusHTTP(StatusAPIKeyMissing) != 401 {
			b.Fatal("ms_status_http")
		}
	}
}

func BenchmarkCgoBaselineParallel(b *testing.B) {
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if cStatusHTTP(StatusAPIKeyMissing) != 401 {
				b.Error("ms_status_http")
				return
			}
		}
	})
}

// BenchmarkMiddleware is one admitted request through the middleware, without
// a network (httptest.ResponseRecorder).
func BenchmarkMiddleware(b *testing.B) {
	s, key := hotKey(b)
	h := Middleware(s)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	req := httptest.NewRequest(http.MethodGet, "/", nil)
	req.Header.Set(DefaultHeader, key)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != 200 {
			b.Fatal(w.Code)
		}
	}
}
