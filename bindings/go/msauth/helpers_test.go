package msauth

import (
	"path/filepath"
	"testing"
	"time"
)

// t0 is the fixed clock of the tests: noon UTC, so the daily quota period
// ends 12 hours (43,200 s) later.
var t0 = time.Date(2025, 3, 14, 12, 0, 0, 0, time.UTC)

var nextMidnight = time.Date(2025, 3, 15, 0, 0, 0, 0, time.UTC)

func openTemp(t testing.TB) *Store {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), "keys.db"))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func mustCreate(t testing.TB, s *Store, spec KeySpec, at time.Time) Created {
	t.Helper()
	c, err := s.CreateKeyAt(spec, at)
	if err != nil {
		t.Fatalf("CreateKeyAt(%+v): %v", spec, err)
	}
	return c
}

func ms(t time.Time) int64 { return t.UnixMilli() }

func str(s string) *string { return &s }
