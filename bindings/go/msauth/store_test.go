package msauth

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestOpenCloseIdempotent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if s.Path() != path {
		t.Errorf("Path() = %q", s.Path())
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("the store file was not created: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	r, err := s.CheckKey("ms_live_whatever", t0)
	if r.Status != StatusNotOpen || r.OK() || !errors.Is(err, ErrNotOpen) || r.HTTPStatus != 503 {
		t.Fatalf("Check after Close = %+v", r)
	}
	if _, err := s.CreateKey(KeySpec{}); !errors.Is(err, ErrNotOpen) {
		t.Errorf("CreateKey after Close: %v", err)
	}
	if _, err := s.GetKey("x"); !errors.Is(err, ErrNotOpen) {
		t.Errorf("GetKey after Close: %v", err)
	}
	if _, err := s.ListKeys(ListFilter{}); !errors.Is(err, ErrNotOpen) {
		t.Errorf("ListKeys after Close: %v", err)
	}
	if _, err := s.UpdateKey("x", KeyPatch{}); !errors.Is(err, ErrNotOpen) {
		t.Errorf("UpdateKey after Close: %v", err)
	}
	if err := s.RevokeKey("x"); !errors.Is(err, ErrNotOpen) {
		t.Errorf("RevokeKey after Close: %v", err)
	}
}

func TestOpenUnusablePathIsStoreError(t *testing.T) {
	_, err := Open(filepath.Join(t.TempDir(), "no", "such", "dir", "keys.db"))
	if !errors.Is(err, ErrStore) {
		t.Fatalf("Open in a missing directory: %v, want ErrStore", err)
	}
	var e *Error
	if !errors.As(err, &e) || e.Message == "" {
		t.Fatalf("the error does not carry ms_last_error(): %#v", err)
	}

	notDB := filepath.Join(t.TempDir(), "garbage.db")
	if err := os.WriteFile(notDB, []byte(strings.Repeat("this is not a database\n", 400)), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(notDB); !errors.Is(err, ErrStore) {
		t.Fatalf("Open of a non-database: %v, want ErrStore", err)
	}
}

// Every documented decision, through Store.Check, with its figures.
func TestCheckDecisions(t *testing.T) {
	s := openTemp(t)

	ok := mustCreate(t, s, KeySpec{Plan: "pro", Quota: &Quota{Limit: 10, Period: Daily},
		RateLimit: Some(RateLimit{Limit: 5, Per: time.Minute})}, t0.Add(-time.Hour))
	r, err := s.CheckKey(ok.Key, t0)
	if !r.OK() || r.Status != StatusOK || r.HTTPStatus != 200 || err != nil {
		t.Fatalf("valid key: %+v", r)
	}
	if r.KeyID != ok.Record.ID || r.Plan != "pro" {
		t.Errorf("KeyID/Plan = %q/%q, want %q/pro", r.KeyID, r.Plan, ok.Record.ID)
	}
	if r.QuotaLimit != 10 || r.QuotaRemaining != 9 || r.QuotaReset != ms(nextMidnight) {
		t.Errorf("quota figures = %d/%d/%d", r.QuotaLimit, r.QuotaRemaining, r.QuotaReset)
	}
	// Burst defaults to the limit; one of 5 tokens used refills in 60s/5.
	if r.RateLimit != 5 || r.RateRemaining != 4 || r.RateReset != ms(t0)+12000 {
		t.Errorf("rate figures = %d/%d/%d", r.RateLimit, r.RateRemaining, r.RateReset)
	}
	if r.RetryAfter != 0 {
		t.Errorf("RetryAfter on 200 = %v", r.RetryAfter)
	}

	// Leading and trailing HTTP whitespace is not part of the key.
	if r, _ := s.CheckKey(" \t"+ok.Key+"\t ", t0); !r.OK() {
		t.Errorf("padded key: %v", r.Status)
	}

	// The key goes to C as pointer + length: a slice of a longer string
	// (not NUL-terminated where it ends) is exactly that key, and a NUL
	// inside a key does not cut it short.
	long := ok.Key + "trailing-bytes"
	if r, _ := s.CheckKey(long[:len(ok.Key)], t0); !r.OK() {
		t.Errorf("key sliced from a longer string: %v", r.Status)
	}
	if r, _ := s.CheckKey(ok.Key+"\x00", t0); r.Status != StatusAPIKeyInvalid {
		t.Errorf("key + NUL: %v, want invalid", r.Status)
	}

	for _, missing := range []string{"", " ", "\t \t"} {
		if r, _ := s.CheckKey(missing, t0); r.Status != StatusAPIKeyMissing || r.HTTPStatus != 401 || r.KeyID != "" {
			t.Errorf("Check(%q) = %v/%d", missing, r.Status, r.HTTPStatus)
		}
	}
	for _, invalid := range []string{"ms_live_doesnotexist", "ms_live_has space", "ms_live_\x01ctl",
		"ms_live_nön-ascii", strings.Repeat("a", 513)} {
		if r, _ := s.CheckKey(invalid, t0); r.Status != StatusAPIKeyInvalid || r.HTTPStatus != 401 || r.KeyID != "" {
			t.Errorf("Check(%q) = %v/%d", invalid, r.Status, r.HTTPStatus)
		}
	}

	exp := mustCreate(t, s, KeySpec{ExpiresAt: Some(t0)}, t0.Add(-time.Hour))
	if r, _ := s.CheckKey(exp.Key, t0.Add(-time.Millisecond)); !r.OK() {
		t.Errorf("one ms before expiry: %v", r.Status)
	}
	if r, _ := s.CheckKey(exp.Key, t0); r.Status != StatusAPIKeyExpired || r.HTTPStatus != 401 {
		t.Errorf("at the expiry instant: %v", r.Status)
	}

	rev := mustCreate(t, s, KeySpec{}, t0.Add(-time.Hour))
	if err := s.RevokeKeyAt(rev.Record.ID, t0.Add(-time.Minute)); err != nil {
		t.Fatal(err)
	}
	if r, _ := s.CheckKey(rev.Key, t0); r.Status != StatusAPIKeyRevoked || r.HTTPStatus != 401 {
		t.Errorf("revoked: %v", r.Status)
	}

	q := mustCreate(t, s, KeySpec{Quota: &Quota{Limit: 2, Period: Daily}, RateLimit: Null[RateLimit]()}, t0)
	for i := 0; i < 2; i++ {
		if r, _ := s.CheckKey(q.Key, t0); !r.OK() {
			t.Fatalf("quota check %d: %v", i, r.Status)
		}
	}
	r, _ = s.CheckKey(q.Key, t0)
	if r.Status != StatusAPIKeyQuotaExceeded || r.HTTPStatus != 429 || r.RetryAfter != nextMidnight.Sub(t0) {
		t.Errorf("quota exceeded: %v/%d retry %v", r.Status, r.HTTPStatus, r.RetryAfter)
	}
	if r.QuotaRemaining != 0 || r.RateLimit != -1 {
		t.Errorf("quota exceeded figures: remaining %d, rate limit %d", r.QuotaRemaining, r.RateLimit)
	}
	// A new UTC day resets the quota.
	if r, _ := s.CheckKey(q.Key, nextMidnight); !r.OK() {
		t.Errorf("after midnight: %v", r.Status)
	}

	rl := mustCreate(t, s, KeySpec{RateLimit: Some(RateLimit{Limit: 2, Per: time.Minute, Burst: 2})}, t0)
	for i := 0; i < 2; i++ {
		if r, _ := s.CheckKey(rl.Key, t0); !r.OK() {
			t.Fatalf("rate check %d: %v", i, r.Status)
		}
	}
	r, _ = s.CheckKey(rl.Key, t0)
	if r.Status != StatusRateLimitExceeded || r.HTTPStatus != 429 || r.RetryAfter != 30*time.Second {
		t.Errorf("rate limited: %v/%d retry %v", r.Status, r.HTTPStatus, r.RetryAfter)
	}
	if r.QuotaLimit != -1 || r.RateRemaining != 0 {
		t.Errorf("rate limited figures: quota %d, remaining %d", r.QuotaLimit, r.RateRemaining)
	}
	// One emission interval later one request is admitted again.
	if r, _ := s.CheckKey(rl.Key, t0.Add(30*time.Second)); !r.OK() {
		t.Errorf("after the retry interval: %v", r.Status)
	}
}

// The decision order of the contract: revoked before expired, expired before
// quota, quota before rate.
func TestDecisionOrder(t *testing.T) {
	s := openTemp(t)
	k := mustCreate(t, s, KeySpec{ExpiresAt: Some(t0), Quota: &Quota{Limit: 1, Period: Daily},
		RateLimit: Some(RateLimit{Limit: 1, Per: time.Minute})}, t0.Add(-time.Hour))
	at := t0.Add(-time.Minute)
	if r, _ := s.CheckKey(k.Key, at); !r.OK() {
		t.Fatal(r.Status)
	}
	if r, _ := s.CheckKey(k.Key, at); r.Status != StatusAPIKeyQuotaExceeded {
		t.Errorf("quota and rate both used up: %v, want quota first", r.Status)
	}
	if r, _ := s.CheckKey(k.Key, t0); r.Status != StatusAPIKeyExpired {
		t.Errorf("expired and over quota: %v, want expired first", r.Status)
	}
	if err := s.RevokeKeyAt(k.Record.ID, t0); err != nil {
		t.Fatal(err)
	}
	if r, _ := s.CheckKey(k.Key, t0); r.Status != StatusAPIKeyRevoked {
		t.Errorf("revoked and expired: %v, want revoked first", r.Status)
	}
}

// A rejected request consumes neither quota nor rate budget.
func TestRejectionConsumesNothing(t *testing.T) {
	s := openTemp(t)
	k := mustCreate(t, s, KeySpec{Quota: &Quota{Limit: 3, Period: Monthly},
		RateLimit: Some(RateLimit{Limit: 1, Per: time.Second})}, t0)
	if r, _ := s.CheckKey(k.Key, t0); !r.OK() {
		t.Fatal(r.Status)
	}
	for i := 0; i < 5; i++ {
		if r, _ := s.CheckKey(k.Key, t0); r.Status != StatusRateLimitExceeded {
			t.Fatalf("burst %d: %v", i, r.Status)
		}
	}
	rec, err := s.GetKey(k.Record.ID)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Usage.Used != 1 || rec.Usage.Total != 1 {
		t.Errorf("usage after 1 admitted + 5 rejected = %+v", rec.Usage)
	}
	r, _ := s.CheckKey(k.Key, t0.Add(time.Second))
	if !r.OK() || r.QuotaRemaining != 1 {
		t.Errorf("second admitted: %v, quota remaining %d, want 1", r.Status, r.QuotaRemaining)
	}
	// Monthly period: ends at 00:00 UTC on April 1st.
	if want := time.Date(2025, 4, 1, 0, 0, 0, 0, time.UTC); r.QuotaReset != ms(want) {
		t.Errorf("monthly QuotaReset = %v, want %v", time.UnixMilli(r.QuotaReset).UTC(), want)
	}
}

func TestCheckRejectsSecondsAsMillis(t *testing.T) {
	s := openTemp(t)
	k := mustCreate(t, s, KeySpec{}, t0)
	r, err := s.CheckKey(k.Key, time.Unix(t0.Unix()/1000, 0)) // a seconds value given as milliseconds
	if r.Status != StatusInvalidArgument || r.OK() || !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("now before 1973: %+v", r)
	}
	var e *Error
	if !errors.As(err, &e) || e.Message == "" {
		t.Fatalf("no ms_last_error() in %#v", err)
	}
	if r.HTTPStatus != 500 {
		t.Errorf("HTTPStatus = %d", r.HTTPStatus)
	}
}

func TestUsagePersistsAcrossReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	k := mustCreate(t, s, KeySpec{Quota: &Quota{Limit: 3, Period: Daily}}, t0)
	for i := 0; i < 2; i++ {
		if r, _ := s.CheckKey(k.Key, t0); !r.OK() {
			t.Fatal(r.Status)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if r, _ := s.CheckKey(k.Key, t0); !r.OK() || r.QuotaRemaining != 0 {
		t.Fatalf("third check after reopen: %v remaining %d", r.Status, r.QuotaRemaining)
	}
	if r, _ := s.CheckKey(k.Key, t0); r.Status != StatusAPIKeyQuotaExceeded {
		t.Fatalf("fourth check after reopen: %v", r.Status)
	}
}

func TestResultHeaders(t *testing.T) {
	s := openTemp(t)
	k := mustCreate(t, s, KeySpec{Quota: &Quota{Limit: 10, Period: Daily},
		RateLimit: Some(RateLimit{Limit: 5, Per: time.Minute})}, t0)
	// check is CheckKey at t0 for the answers whose headers are read.
	check := func(key string) Result {
		r, err := s.CheckKey(key, t0)
		if err != nil {
			t.Fatalf("CheckKey: %v", err)
		}
		return r
	}
	h := check(k.Key).Headers()
	want := map[string]string{
		"Ratelimit-Policy": `"quota";q=10;w=86400, "rate";q=5;w=60`,
		"Ratelimit":        `"quota";r=9;t=43200, "rate";r=4;t=12`,
	}
	if len(h) != len(want) {
		t.Errorf("headers = %v", h)
	}
	for k, v := range want {
		if h.Get(k) != v {
			t.Errorf("%s = %q, want %q", k, h.Get(k), v)
		}
	}

	// No quota, no rate limit: no policy to advertise.
	free := mustCreate(t, s, KeySpec{RateLimit: Null[RateLimit]()}, t0)
	if h := check(free.Key).Headers(); len(h) != 0 {
		t.Errorf("headers of an unlimited key = %v", h)
	}
	// Rejections before any policy applies carry none either.
	if h := check("").Headers(); len(h) != 0 {
		t.Errorf("headers of a missing key = %v", h)
	}

	// Retry-After is whole seconds rounded up: 1,500 ms → 2.
	fast := mustCreate(t, s, KeySpec{RateLimit: Some(RateLimit{Limit: 2, Per: 3 * time.Second, Burst: 1})}, t0)
	if r, _ := s.CheckKey(fast.Key, t0); !r.OK() {
		t.Fatal(r.Status)
	}
	r, _ := s.CheckKey(fast.Key, t0)
	if r.Status != StatusRateLimitExceeded || r.RetryAfter != 1500*time.Millisecond {
		t.Fatalf("rate limited: %v retry %v", r.Status, r.RetryAfter)
	}
	if got := r.Headers().Get("Retry-After"); got != "2" {
		t.Errorf("Retry-After = %q, want 2", got)
	}
	// A rate refusal's t is the time until the bucket is full again, as on 200s.
	if got := r.Headers().Get("RateLimit"); got != `"rate";r=0;t=2` {
		t.Errorf("RateLimit of a rate refusal = %q", got)
	}
	if got := r.Headers().Get("RateLimit-Policy"); got != `"rate";q=2;w=3` {
		t.Errorf("RateLimit-Policy of a rate refusal = %q", got)
	}

	// w tells a monthly quota from a daily one: the month's length in seconds (March: 31 days).
	monthly := mustCreate(t, s, KeySpec{Quota: &Quota{Limit: 10000, Period: Monthly}, RateLimit: Null[RateLimit]()}, t0)
	if got := check(monthly.Key).Headers().Get("RateLimit-Policy"); got != `"quota";q=10000;w=2678400` {
		t.Errorf("RateLimit-Policy of a monthly quota = %q", got)
	}
}
