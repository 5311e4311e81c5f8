package msauth

import (
	"encoding/json"
	"errors"
	"sort"
	"strings"
	"testing"
	"time"
)

const year = 365 * 24 * time.Hour

func TestCreateKeyDefaults(t *testing.T) {
	s := openTemp(t)
	c := mustCreate(t, s, KeySpec{}, t0)
	if !strings.HasPrefix(c.Key, "ms_live_") {
		t.Errorf("Key = %q, want ms_live_...", c.Key)
	}
	r := c.Record
	if r.ID == "" || len(r.ID) >= 48 || r.Env != EnvLive || !strings.HasPrefix(c.Key, r.Prefix) || len(r.Prefix) <= len("ms_live_") {
		t.Errorf("record = %+v", r)
	}
	if strings.Contains(string(r.Raw), c.Key) == false {
		t.Errorf("Raw does not hold the create answer: %s", r.Raw)
	}
	if r.Name != nil || r.Plan != nil || r.Quota != nil || r.RevokedAtMS != nil || r.RevokedReason != nil || r.Revoked() {
		t.Errorf("unset fields are not null: %+v", r)
	}
	if r.CreatedAtMS != ms(t0) || !r.CreatedAt().Equal(t0) {
		t.Errorf("CreatedAtMS = %d, want %d", r.CreatedAtMS, ms(t0))
	}
	if exp, ok := r.ExpiresAt(); !ok || !exp.Equal(t0.Add(year)) {
		t.Errorf("default expiry = %v %v, want %v", exp, ok, t0.Add(year))
	}
	if r.RateLimit == nil || *r.RateLimit != (RateLimit{Limit: 60, Per: time.Minute, Burst: 60, WindowMS: 60000}) {
		t.Errorf("default rate limit = %+v, want 60/60000/60", r.RateLimit)
	}
	if r.RateLimit.Window() != time.Minute {
		t.Errorf("Window() = %v", r.RateLimit.Window())
	}
	if r.Usage.Used != 0 || r.Usage.Total != 0 || r.Usage.LastUsedAtMS != nil {
		t.Errorf("usage of a new key = %+v", r.Usage)
	}

	// The answer of get carries no plaintext key.
	got, err := s.GetKey(r.ID)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(got.Raw), c.Key) || strings.Contains(string(got.Raw), `"key"`) {
		t.Errorf("GetKey answer holds the key: %s", got.Raw)
	}
	if got.ID != r.ID || got.CreatedAtMS != r.CreatedAtMS {
		t.Errorf("GetKey = %+v", got)
	}
}

func TestCreateKeyFullSpec(t *testing.T) {
	s := openTemp(t)
	exp := t0.Add(30 * 24 * time.Hour)
	c := mustCreate(t, s, KeySpec{
		Env:       EnvTest,
		Name:      "billing-service",
		Plan:      "pro",
		ExpiresAt: Some(exp),
		Quota:     &Quota{Limit: 10000, Period: Monthly},
		RateLimit: Some(RateLimit{Limit: 10, Per: time.Second, Burst: 20}),
		Meta:      json.RawMessage(`{"team":"billing","tags":["a","b"]}`),
	}, t0)
	r := c.Record
	if !strings.HasPrefix(c.Key, "ms_test_") || r.Env != EnvTest {
		t.Errorf("env test: key %q env %q", c.Key, r.Env)
	}
	if r.Name == nil || *r.Name != "billing-service" || r.Plan == nil || *r.Plan != "pro" {
		t.Errorf("name/plan = %v/%v", r.Name, r.Plan)
	}
	if r.ExpiresAtMS == nil || *r.ExpiresAtMS != ms(exp) {
		t.Errorf("expires_at_ms = %v", r.ExpiresAtMS)
	}
	if r.Quota == nil || *r.Quota != (Quota{Limit: 10000, Period: Monthly}) {
		t.Errorf("quota = %+v", r.Quota)
	}
	if r.RateLimit == nil || *r.RateLimit != (RateLimit{Limit: 10, Per: time.Second, Burst: 20, WindowMS: 1000}) {
		t.Errorf("rate_limit = %+v", r.RateLimit)
	}
	var meta map[string]interface{}
	if err := json.Unmarshal(r.Meta, &meta); err != nil || meta["team"] != "billing" {
		t.Errorf("meta = %s (%v)", r.Meta, err)
	}
}

// Absent and null mean different things in a spec.
func TestCreateKeyNullVersusAbsent(t *testing.T) {
	s := openTemp(t)
	c := mustCreate(t, s, KeySpec{ExpiresAt: Null[time.Time](), RateLimit: Null[RateLimit]()}, t0)
	if c.Record.ExpiresAtMS != nil {
		t.Errorf("ExpiresAt Null: expires_at_ms = %d, want null", *c.Record.ExpiresAtMS)
	}
	if c.Record.RateLimit != nil {
		t.Errorf("RateLimit Null: rate_limit = %+v, want null", c.Record.RateLimit)
	}
	// A key that never expires still works a century later.
	if r, _ := s.CheckKey(c.Key, t0.Add(100*year)); !r.OK() || r.RateLimit != -1 {
		t.Errorf("no expiry, no rate limit: %v rate %d", r.Status, r.RateLimit)
	}

	js, err := KeySpec{}.MarshalJSON()
	if err != nil || string(js) != "{}" {
		t.Errorf("empty spec = %s %v", js, err)
	}
	js, _ = KeySpec{ExpiresAt: Null[time.Time](), RateLimit: Some(RateLimit{Limit: 5})}.MarshalJSON()
	if string(js) != `{"expires_at_ms":null,"rate_limit":{"limit":5}}` {
		t.Errorf("spec JSON = %s", js)
	}
}

func TestImportKey(t *testing.T) {
	s := openTemp(t)
	const legacy = "legacy-key-0123456789"
	c := mustCreate(t, s, KeySpec{Key: legacy, Plan: "legacy"}, t0)
	if c.Key != legacy {
		t.Errorf("imported Key = %q", c.Key)
	}
	if r, _ := s.CheckKey(legacy, t0); !r.OK() || r.Plan != "legacy" || r.KeyID != c.Record.ID {
		t.Errorf("check of imported key: %+v", r)
	}
	// The same plaintext twice is refused, as a library error.
	if _, err := s.CreateKeyAt(KeySpec{Key: legacy}, t0); err == nil {
		t.Error("importing the same key twice succeeded")
	}
}

func TestCreateKeyBadSpec(t *testing.T) {
	s := openTemp(t)
	bad := []KeySpec{
		{Quota: &Quota{Limit: 10, Period: "weekly"}},
		{Env: "prod"},
		{RateLimit: Some(RateLimit{Limit: -1})},
		{Key: "short"},
	}
	for _, spec := range bad {
		_, err := s.CreateKeyAt(spec, t0)
		var e *Error
		if !errors.Is(err, ErrInvalidArgument) || !errors.As(err, &e) || e.Message == "" {
			t.Errorf("CreateKey(%+v) = %v, want ErrInvalidArgument with a message", spec, err)
		}
	}
	// Invalid meta JSON never reaches the library.
	_, err := s.CreateKeyAt(KeySpec{Meta: json.RawMessage(`{"unterminated`)}, t0)
	if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), "meta") {
		t.Errorf("bad meta: %v", err)
	}
	if keys, err := s.ListKeys(ListFilter{}); err != nil || len(keys) != 0 {
		t.Errorf("refused specs left keys: %v %v", keys, err)
	}
}

func TestGetKeyNotFound(t *testing.T) {
	s := openTemp(t)
	_, err := s.GetKey("no-such-id")
	var e *Error
	if !errors.Is(err, ErrNotFound) || !errors.As(err, &e) || e.Message == "" {
		t.Fatalf("GetKey(unknown) = %v, want ErrNotFound with a message", err)
	}
	if _, err := s.UpdateKey("no-such-id", KeyPatch{Plan: Some("x")}); !errors.Is(err, ErrNotFound) {
		t.Errorf("UpdateKey(unknown) = %v", err)
	}
	if err := s.RevokeKey("no-such-id"); !errors.Is(err, ErrNotFound) {
		t.Errorf("RevokeKey(unknown) = %v", err)
	}
}

func TestListKeys(t *testing.T) {
	s := openTemp(t)
	a := mustCreate(t, s, KeySpec{Plan: "pro"}, t0)
	b := mustCreate(t, s, KeySpec{Plan: "pro", Env: EnvTest}, t0)
	c := mustCreate(t, s, KeySpec{Plan: "free"}, t0)
	d := mustCreate(t, s, KeySpec{}, t0)

	ids := func(rs []Record, err error) []string {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		out := make([]string, len(rs))
		for i, r := range rs {
			out[i] = r.ID
		}
		sort.Strings(out)
		return out
	}
	sorted := func(s ...string) []string { sort.Strings(s); return s }
	eq := func(got, want []string) bool { return strings.Join(got, ",") == strings.Join(want, ",") }

	if got, want := ids(s.ListKeys(ListFilter{})), sorted(a.Record.ID, b.Record.ID, c.Record.ID, d.Record.ID); !eq(got, want) {
		t.Errorf("all = %v, want %v", got, want)
	}
	if got, want := ids(s.ListKeys(ListFilter{Plan: "pro"})), sorted(a.Record.ID, b.Record.ID); !eq(got, want) {
		t.Errorf("plan pro = %v, want %v", got, want)
	}
	if got, want := ids(s.ListKeys(ListFilter{Plan: "pro", Env: EnvTest})), sorted(b.Record.ID); !eq(got, want) {
		t.Errorf("plan pro, env test = %v, want %v", got, want)
	}
	if got := ids(s.ListKeys(ListFilter{Plan: "enterprise"})); len(got) != 0 {
		t.Errorf("plan enterprise = %v", got)
	}
	rs, _ := s.ListKeys(ListFilter{Plan: "free"})
	if len(rs) != 1 || rs[0].Plan == nil || *rs[0].Plan != "free" || len(rs[0].Raw) == 0 {
		t.Errorf("listed record = %+v", rs)
	}
}

func TestUpdateKey(t *testing.T) {
	s := openTemp(t)
	c := mustCreate(t, s, KeySpec{Name: "svc", Plan: "free", Quota: &Quota{Limit: 1, Period: Daily},
		Meta: json.RawMessage(`{"a":1}`)}, t0)
	id := c.Record.ID

	// Raising the quota takes effect on the next check.
	if r, _ := s.CheckKey(c.Key, t0); !r.OK() {
		t.Fatal(r.Status)
	}
	if r, _ := s.CheckKey(c.Key, t0); r.Status != StatusAPIKeyQuotaExceeded {
		t.Fatalf("quota 1: %v", r.Status)
	}
	rec, err := s.UpdateKey(id, KeyPatch{Plan: Some("pro"), Quota: Some(Quota{Limit: 5, Period: Daily})})
	if err != nil {
		t.Fatal(err)
	}
	if rec.Plan == nil || *rec.Plan != "pro" || rec.Quota == nil || rec.Quota.Limit != 5 {
		t.Errorf("after update: %+v", rec)
	}
	if rec.Name == nil || *rec.Name != "svc" {
		t.Errorf("an absent member changed the name: %v", rec.Name)
	}
	if r, _ := s.CheckKey(c.Key, t0); !r.OK() || r.Plan != "pro" || r.QuotaRemaining != 3 {
		t.Errorf("after raising the quota: %v plan %q remaining %d", r.Status, r.Plan, r.QuotaRemaining)
	}

	// Null clears: no name, no plan, never expires, no quota, no rate limit.
	rec, err = s.UpdateKey(id, KeyPatch{Name: Null[string](), Plan: Null[string](), ExpiresAt: Null[time.Time](),
		Quota: Null[Quota](), RateLimit: Null[RateLimit]()})
	if err != nil {
		t.Fatal(err)
	}
	if rec.Name != nil || rec.Plan != nil || rec.ExpiresAtMS != nil || rec.Quota != nil || rec.RateLimit != nil {
		t.Errorf("after clearing: %s", rec.Raw)
	}
	if r, _ := s.CheckKey(c.Key, t0.Add(2*year)); !r.OK() || r.QuotaLimit != -1 || r.RateLimit != -1 || r.Plan != "" {
		t.Errorf("cleared key: %+v", r)
	}

	// A new expiry in the past expires the key.
	if _, err := s.UpdateKey(id, KeyPatch{ExpiresAt: Some(t0)}); err != nil {
		t.Fatal(err)
	}
	if r, _ := s.CheckKey(c.Key, t0); r.Status != StatusAPIKeyExpired {
		t.Errorf("after setting expiry to now: %v", r.Status)
	}

	// Meta replaced.
	rec, err = s.UpdateKey(id, KeyPatch{Meta: Some(json.RawMessage(`{"b":2}`))})
	if err != nil {
		t.Fatal(err)
	}
	var meta map[string]int
	if err := json.Unmarshal(rec.Meta, &meta); err != nil || meta["b"] != 2 {
		t.Errorf("meta = %s", rec.Meta)
	}

	if _, err := s.UpdateKey(id, KeyPatch{Quota: Some(Quota{Limit: 5, Period: "hourly"})}); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("bad quota period in a patch: %v", err)
	}

	js, _ := KeyPatch{}.MarshalJSON()
	if string(js) != "{}" {
		t.Errorf("empty patch = %s", js)
	}
	js, _ = KeyPatch{Name: Null[string](), Quota: Some(Quota{Limit: 1, Period: Daily})}.MarshalJSON()
	if string(js) != `{"name":null,"quota":{"limit":1,"period":"daily"}}` {
		t.Errorf("patch JSON = %s", js)
	}
}

func TestRevokeKey(t *testing.T) {
	s := openTemp(t)
	c := mustCreate(t, s, KeySpec{}, t0)
	at := t0.Add(time.Minute)
	if err := s.RevokeKeyAt(c.Record.ID, at); err != nil {
		t.Fatal(err)
	}
	rec, err := s.GetKey(c.Record.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !rec.Revoked() || *rec.RevokedAtMS != ms(at) {
		t.Errorf("revoked record: %s", rec.Raw)
	}
	if r, _ := s.CheckKey(c.Key, at); r.Status != StatusAPIKeyRevoked || r.HTTPStatus != 401 {
		t.Errorf("check of a revoked key: %v", r.Status)
	}
	// An update cannot bring it back.
	if _, err := s.UpdateKey(c.Record.ID, KeyPatch{ExpiresAt: Null[time.Time]()}); err != nil && !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("update of a revoked key: %v", err)
	}
	if r, _ := s.CheckKey(c.Key, at); r.Status != StatusAPIKeyRevoked {
		t.Errorf("after updating a revoked key: %v", r.Status)
	}
}

func TestUsageCounted(t *testing.T) {
	s := openTemp(t)
	c := mustCreate(t, s, KeySpec{Quota: &Quota{Limit: 100, Period: Daily}}, t0)
	for i := 0; i < 3; i++ {
		if r, _ := s.CheckKey(c.Key, t0.Add(time.Duration(i)*time.Second)); !r.OK() {
			t.Fatal(r.Status)
		}
	}
	rec, err := s.GetKey(c.Record.ID)
	if err != nil {
		t.Fatal(err)
	}
	u := rec.Usage
	if u.Used != 3 || u.Total != 3 || u.LastUsedAtMS == nil || *u.LastUsedAtMS != ms(t0.Add(2*time.Second)) {
		t.Errorf("usage = %+v", u)
	}
	if u.PeriodStartMS != ms(time.Date(2025, 3, 14, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("period_start_ms = %d", u.PeriodStartMS)
	}
}
