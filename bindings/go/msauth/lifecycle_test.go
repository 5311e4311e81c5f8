package msauth

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestMain also plays the other process of the cross-process tests: started
// with MSAUTH_TEST_CHILD set, the test binary does that one job and exits.
func TestMain(m *testing.M) {
	if job := os.Getenv("MSAUTH_TEST_CHILD"); job != "" {
		if err := childJob(job, os.Getenv("MSAUTH_TEST_DB"), os.Getenv("MSAUTH_TEST_ARG")); err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func childJob(job, db, arg string) error {
	switch job {
	case "put-plan":
		s, err := Open(db)
		if err != nil {
			return err
		}
		defer s.Close()
		p, err := s.PutPlan(Plan{Name: "pro", Quota: &Quota{Limit: 5, Period: Daily}, RateLimit: Null[RateLimit]()})
		if err != nil {
			return err
		}
		fmt.Println(p.Keys)
	case "set-abuse":
		s, err := Open(db)
		if err != nil {
			return err
		}
		defer s.Close()
		_, err = s.SetPolicy(Policies{Abuse: Some(AbusePolicy{Limit: 3, Window: time.Minute})})
		return err
	case "check":
		s, err := Open(db)
		if err != nil {
			return err
		}
		defer s.Close()
		for i := 0; i < 3; i++ {
			if r, err := s.CheckKeyNow(arg); !r.OK() {
				return fmt.Errorf("check: %v %v", r.Status, err)
			}
		}
		if r, _ := s.CheckKeyNow("ms_live_nope"); r.Status != StatusAPIKeyInvalid {
			return fmt.Errorf("unknown key: %v", r.Status)
		}
	case "check-and-die-strict", "check-and-die-batched":
		d := DurabilityBatched
		if job == "check-and-die-strict" {
			d = DurabilityStrict
		}
		s, err := OpenWithOptions(db, Options{Durability: d, FlushInterval: Some(time.Hour)})
		if err != nil {
			return err
		}
		for i := 0; i < 5; i++ {
			if r, err := s.CheckKeyNow(arg); !r.OK() {
				return fmt.Errorf("check: %v %v", r.Status, err)
			}
		}
		os.Exit(0) // no Close: no final flush
	default:
		return fmt.Errorf("unknown job %q", job)
	}
	return nil
}

// runChild runs job in another process (another copy of the library and its
// own handle on the store) and answers its standard output.
func runChild(t *testing.T, job, db, arg string) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self, "-test.run=^$")
	cmd.Env = append(os.Environ(), "MSAUTH_TEST_CHILD="+job, "MSAUTH_TEST_DB="+db, "MSAUTH_TEST_ARG="+arg)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("child %s: %v\n%s", job, err, stderr.String())
	}
	return string(out)
}

// refused checks that err is ErrInvalidArgument carrying each fragment in its
// message (the library's ms_last_error, or the binding's own).
func refused(t *testing.T, what string, err error, fragments ...string) {
	t.Helper()
	var e *Error
	if !errors.Is(err, ErrInvalidArgument) || !errors.As(err, &e) {
		t.Errorf("%s: %v, want ErrInvalidArgument", what, err)
		return
	}
	for _, f := range fragments {
		if !strings.Contains(e.Message, f) {
			t.Errorf("%s: message %q lacks %q", what, e.Message, f)
		}
	}
}

const hour = time.Hour

// -- store options -----------------------------------------------------------

func TestOpenWithOptions(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.db")
	// The largest values the library takes: converted to exact milliseconds.
	s, err := OpenWithOptions(path, Options{FlushInterval: Some(time.Hour), Durability: DurabilityStrict,
		BusyTimeout: Some(10 * time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	c := mustCreate(t, s, KeySpec{RateLimit: Null[RateLimit]()}, t0)
	if r, err := s.CheckKey(c.Key, t0); !r.OK() {
		t.Fatalf("strict store: %v %v", r.Status, err)
	}
	_ = s.Close()
	s, err = OpenWithOptions(path, Options{FlushInterval: Some(time.Duration(0)), Durability: DurabilityBatched,
		BusyTimeout: Some(time.Duration(0))})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := s.CheckKey(c.Key, t0); !r.OK() {
		t.Fatalf("batched store: %v %v", r.Status, err)
	}
	_ = s.Close()
	s, err = OpenWithOptions(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	_ = s.Close()

	_, err = OpenWithOptions(path, Options{FlushInterval: Some(time.Hour + time.Millisecond)})
	refused(t, "flush interval over an hour", err, "flush_interval_ms must be an integer from 0 to 3600000")
	_, err = OpenWithOptions(path, Options{BusyTimeout: Some(10*time.Minute + time.Millisecond)})
	refused(t, "busy timeout over 10 minutes", err, "busy_timeout_ms must be an integer from 0 to 600000")
	_, err = OpenWithOptions(path, Options{FlushInterval: Some(-time.Second)})
	refused(t, "negative flush interval", err, "flush_interval_ms")
	_, err = OpenWithOptions(path, Options{FlushInterval: Null[time.Duration]()})
	refused(t, "null flush interval", err, "flush_interval_ms")
	_, err = OpenWithOptions(path, Options{Durability: "eventual"})
	refused(t, "unknown durability", err, `durability must be "batched" or "strict"`)

	js, _ := Options{}.MarshalJSON()
	if string(js) != "{}" {
		t.Errorf("zero Options = %s", js)
	}
	js, _ = Options{FlushInterval: Some(1500 * time.Millisecond), Durability: DurabilityStrict,
		BusyTimeout: Some(time.Duration(0))}.MarshalJSON()
	if string(js) != `{"flush_interval_ms":1500,"durability":"strict","busy_timeout_ms":0}` {
		t.Errorf("Options JSON = %s", js)
	}
}

func TestCreateFalseOpensOnlyAnExistingStore(t *testing.T) {
	dir := t.TempDir()
	typo := filepath.Join(dir, "typo.db")
	_, err := OpenWithOptions(typo, Options{Create: Some(false)})
	var e *Error
	if !errors.Is(err, ErrStore) || !errors.As(err, &e) || !strings.Contains(e.Message, typo) ||
		!strings.Contains(e.Message, "no store") {
		t.Fatalf("a path with no store: %v, want ErrStore naming it", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("files left behind: %v", entries)
	}
	path := filepath.Join(dir, "keys.db")
	s, err := OpenWithOptions(path, Options{Create: Some(true)})
	if err != nil {
		t.Fatal(err)
	}
	c := mustCreate(t, s, KeySpec{}, t0)
	_ = s.Close()
	s, err = OpenWithOptions(path, Options{Create: Some(false)})
	if err != nil {
		t.Fatal(err)
	}
	if rec, err := s.GetKey(c.Record.ID); err != nil || rec.ID != c.Record.ID {
		t.Fatalf("the existing store's key: %v %v", rec, err)
	}
	_ = s.Close()
	_, err = OpenWithOptions(path, Options{Create: Null[bool]()})
	refused(t, "null create", err, "create must be true or false")
	js, _ := Options{Create: Some(false)}.MarshalJSON()
	if string(js) != `{"create":false}` {
		t.Errorf("Options JSON = %s", js)
	}
}

// A process checks and dies without Close (no final flush), then the counters
// file is lost as in a power loss: only what reached the database is left.
func TestCountsAfterAPowerLoss(t *testing.T) {
	for _, c := range []struct {
		durability string
		survives   bool
	}{{"strict", true}, {"batched", false}} {
		t.Run(c.durability, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "keys.db")
			s, err := Open(path)
			if err != nil {
				t.Fatal(err)
			}
			k := mustCreate(t, s, KeySpec{RateLimit: Null[RateLimit]()}, time.Now())
			_ = s.Close()
			runChild(t, "check-and-die-"+c.durability, path, k.Key)
			resolved, err := filepath.EvalSymlinks(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Remove(resolved + "-counters"); err != nil {
				t.Fatal(err)
			}
			s = openAt(t, path)
			rec, err := s.GetKey(k.Record.ID)
			if err != nil {
				t.Fatal(err)
			}
			if c.survives && rec.Usage.Total != 5 {
				t.Errorf("strict: %d counts in the database, want 5", rec.Usage.Total)
			}
			if !c.survives && rec.Usage.Total >= 5 {
				t.Errorf("batched with an hour's flush interval: %d counts in the database, want fewer than 5", rec.Usage.Total)
			}
		})
	}
}

func openAt(t *testing.T, path string) *Store {
	t.Helper()
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// -- actor and audit -----------------------------------------------------------

func TestSetActorNamesTheAuditActor(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.db")
	portal, other := openAt(t, path), openAt(t, path)
	if err := portal.SetActor("portal:alice@example.com"); err != nil {
		t.Fatal(err)
	}
	k := mustCreate(t, portal, KeySpec{}, t0)
	if _, err := portal.UpdateKey(k.Record.ID, KeyPatch{Name: Some("billing")}); err != nil {
		t.Fatal(err)
	}
	if err := other.RevokeKeyAt(k.Record.ID, t0.Add(time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	events, err := portal.Audit(AuditFilter{KeyID: k.Record.ID})
	if err != nil {
		t.Fatal(err)
	}
	if len(events) != 3 || events[0].Action != "key.create" || events[1].Action != "key.update" ||
		events[0].Actor != "portal:alice@example.com" || events[1].Actor != "portal:alice@example.com" {
		t.Fatalf("events = %+v", events)
	}
	// Without SetActor the library names the program, its pid and uid.
	if events[2].Action != "key.revoke" || !strings.Contains(events[2].Actor, strconv.Itoa(os.Getpid())) {
		t.Errorf("default actor: %+v", events[2])
	}
	refused(t, "actor over 200 bytes", portal.SetActor(strings.Repeat("x", 201)), "actor is longer than 200 bytes")
	refused(t, "actor with a NUL", portal.SetActor("portal:alice\x00admin"), "NUL")
	later := mustCreate(t, portal, KeySpec{}, t0)
	if events, _ := portal.Audit(AuditFilter{KeyID: later.Record.ID}); len(events) != 1 || events[0].Actor != "portal:alice@example.com" {
		t.Errorf("after refused actors: %+v", events)
	}
}

func TestAudit(t *testing.T) {
	s := openTemp(t)
	if err := s.SetActor("ops:bob"); err != nil {
		t.Fatal(err)
	}
	k := mustCreate(t, s, KeySpec{Plan: "pro"}, t0)
	if err := s.RevokeKeyAt(k.Record.ID, t0.Add(1*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.PutPlanAt(Plan{Name: "pro"}, t0.Add(3*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SetPolicyAt(Policies{Idle: Some(90 * day)}, t0.Add(4*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	actions := func(f AuditFilter) string {
		t.Helper()
		events, err := s.Audit(f)
		if err != nil {
			t.Fatal(err)
		}
		out := make([]string, len(events))
		for i, e := range events {
			out[i] = e.Action
		}
		return strings.Join(out, ",")
	}
	if got := actions(AuditFilter{}); got != "key.create,key.revoke,plan.put,policy.set" {
		t.Fatalf("actions = %s", got)
	}
	events, _ := s.Audit(AuditFilter{})
	first := events[0]
	if first.KeyID != k.Record.ID || !first.At.Equal(t0) || first.Actor != "ops:bob" || first.Seq >= events[1].Seq {
		t.Errorf("first event = %+v", first)
	}
	var detail map[string]interface{}
	if err := json.Unmarshal(events[1].Detail, &detail); err != nil || detail["reason"] != "manual" {
		t.Errorf("revoke detail = %s", events[1].Detail)
	}
	if events[2].KeyID != "" || !strings.Contains(string(events[2].Detail), `"name":"pro"`) {
		t.Errorf("plan.put event = %+v", events[2])
	}
	for _, e := range events {
		if strings.Contains(string(e.Detail), k.Key) {
			t.Errorf("the audit log holds a plaintext key: %s", e.Detail)
		}
	}
	if got := actions(AuditFilter{KeyID: k.Record.ID}); got != "key.create,key.revoke" {
		t.Errorf("of the key: %s", got)
	}
	if got := actions(AuditFilter{Since: t0.Add(3 * time.Millisecond)}); got != "plan.put,policy.set" {
		t.Errorf("since: %s", got)
	}
	if got := actions(AuditFilter{Limit: 1}); got != "policy.set" {
		t.Errorf("the last one: %s", got)
	}
	if got := actions(AuditFilter{KeyID: "key_none"}); got != "" {
		t.Errorf("unknown key: %s", got)
	}
	_, err := s.Audit(AuditFilter{Limit: -1})
	refused(t, "negative limit", err, "limit")
}

// -- rotation ----------------------------------------------------------------

func TestRotateKey(t *testing.T) {
	s := openTemp(t)
	old := mustCreate(t, s, KeySpec{Plan: "pro", Meta: json.RawMessage(`{"team":"billing"}`),
		Quota: &Quota{Limit: 5, Period: Daily}, RateLimit: Null[RateLimit]()}, t0)
	for i := 0; i < 3; i++ {
		if r, _ := s.CheckKey(old.Key, t0); !r.OK() {
			t.Fatal(r.Status)
		}
	}
	c, err := s.RotateKeyAt(old.Record.ID, hour, t0)
	if err != nil {
		t.Fatal(err)
	}
	r := c.Record
	if c.Key == old.Key || !strings.HasPrefix(c.Key, "ms_live_") || r.ID == old.Record.ID {
		t.Fatalf("rotated = %q %+v", c.Key, r)
	}
	if r.Plan == nil || *r.Plan != "pro" || string(r.Meta) != `{"team":"billing"}` || r.Quota == nil || *r.Quota != *old.Record.Quota {
		t.Errorf("the new key's policy: %s", r.Raw)
	}
	if r.RotatedFrom == nil || *r.RotatedFrom != old.Record.ID || r.Usage.Used != 3 {
		t.Errorf("rotated_from / shared quota: %s", r.Raw)
	}
	was, err := s.GetKey(old.Record.ID)
	if err != nil {
		t.Fatal(err)
	}
	if was.RotatedTo == nil || *was.RotatedTo != r.ID || was.RevokeAtMS == nil || *was.RevokeAtMS != ms(t0.Add(hour)) {
		t.Errorf("old record: %s", was.Raw)
	}
	if res, _ := s.CheckKey(c.Key, t0); !res.OK() || res.QuotaRemaining != 1 || res.KeyID != r.ID {
		t.Errorf("new key: %+v", res)
	}
	if res, _ := s.CheckKey(old.Key, t0.Add(hour-time.Millisecond)); !res.OK() {
		t.Errorf("old key in its grace: %v", res.Status)
	}
	if res, _ := s.CheckKey(c.Key, t0.Add(hour-time.Millisecond)); res.Status != StatusAPIKeyQuotaExceeded {
		t.Errorf("one quota for both: %v", res.Status)
	}
	if res, _ := s.CheckKey(old.Key, t0.Add(hour)); res.Status != StatusAPIKeyRevoked {
		t.Errorf("old key at the grace's end: %v", res.Status)
	}
	if res, _ := s.CheckKey(c.Key, t0.Add(24*hour)); !res.OK() {
		t.Errorf("new key the next day: %v", res.Status)
	}
}

func TestRotateKeyGraceAndRefusals(t *testing.T) {
	s := openTemp(t)
	a := mustCreate(t, s, KeySpec{}, t0)
	b, err := s.RotateKeyAt(a.Record.ID, DefaultGrace, t0)
	if err != nil {
		t.Fatal(err)
	}
	if rec, _ := s.GetKey(a.Record.ID); rec.RevokeAtMS == nil || *rec.RevokeAtMS != ms(t0.Add(24*hour)) {
		t.Errorf("DefaultGrace: %s", rec.Raw)
	}
	c, err := s.RotateKeyAt(b.Record.ID, 0, t0)
	if err != nil {
		t.Fatal(err)
	}
	if res, _ := s.CheckKey(b.Key, t0); res.Status != StatusAPIKeyRevoked {
		t.Errorf("no grace: %v", res.Status)
	}
	if res, _ := s.CheckKey(c.Key, t0); !res.OK() {
		t.Errorf("the newest key: %v", res.Status)
	}
	_, err = s.RotateKeyAt(a.Record.ID, hour, t0)
	refused(t, "rotated twice", err, "already rotated")
	gone := mustCreate(t, s, KeySpec{}, t0)
	if err := s.RevokeKeyAt(gone.Record.ID, t0); err != nil {
		t.Fatal(err)
	}
	_, err = s.RotateKeyAt(gone.Record.ID, hour, t0)
	refused(t, "revoked key", err, "revoked")
	_, err = s.RotateKeyAt(c.Record.ID, -time.Millisecond, t0)
	refused(t, "negative grace", err, "grace_ms")
	_, err = s.RotateKeyAt(c.Record.ID, 367*day, t0)
	refused(t, "grace over a year", err, "grace_ms")
	_, err = s.RotateKeyAt(c.Record.ID, hour, time.Unix(1, 0))
	refused(t, "time in seconds", err, "now_ms")
	_, err = s.RotateKeyAt(c.Record.ID+"\x00x", hour, t0)
	refused(t, "id with a NUL", err, "NUL")
	if _, err := s.RotateKey("key_nope", hour); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown key: %v", err)
	}
}

// -- plans -------------------------------------------------------------------

func TestPutPlanAndPlans(t *testing.T) {
	s := openTemp(t)
	pro, err := s.PutPlanAt(Plan{Name: "pro", Quota: &Quota{Limit: 100, Period: Daily},
		RateLimit: Some(RateLimit{Limit: 10, Per: time.Second}), Lifetime: 30 * day}, t0)
	if err != nil {
		t.Fatal(err)
	}
	want := Plan{Name: "pro", Quota: &Quota{Limit: 100, Period: Daily},
		RateLimit: Some(RateLimit{Limit: 10, Per: time.Second, Burst: 10, WindowMS: 1000}), Lifetime: 30 * day, UpdatedAt: t0, Keys: 0}
	if !reflect.DeepEqual(pro, want) {
		t.Errorf("PutPlan = %+v\nwant %+v", pro, want)
	}
	// Absent rate limit: the store default; Null: none; no quota, no lifetime.
	def, err := s.PutPlanAt(Plan{Name: "default"}, t0)
	if rl, ok := def.RateLimit.Get(); err != nil || !ok || rl != (RateLimit{Limit: 60, Per: time.Minute, Burst: 60, WindowMS: 60000}) ||
		def.Quota != nil || def.Lifetime != 0 {
		t.Errorf("default plan = %+v %v", def, err)
	}
	free, err := s.PutPlanAt(Plan{Name: "free", RateLimit: Null[RateLimit]()}, t0)
	if err != nil || !free.RateLimit.IsNull() {
		t.Errorf("free plan = %+v %v", free, err)
	}

	follower := mustCreate(t, s, KeySpec{Plan: "pro"}, t0)
	own := mustCreate(t, s, KeySpec{Plan: "pro", Quota: &Quota{Limit: 1, Period: Daily}}, t0)
	if exp, ok := follower.Record.ExpiresAt(); !ok || !exp.Equal(t0.Add(30*day)) {
		t.Errorf("the plan's lifetime: %v", exp)
	}
	if strings.Join(follower.Record.FollowsPlan, ",") != "quota,rate_limit" || strings.Join(own.Record.FollowsPlan, ",") != "rate_limit" {
		t.Errorf("follows_plan: %v / %v", follower.Record.FollowsPlan, own.Record.FollowsPlan)
	}

	plans, err := s.Plans()
	if err != nil {
		t.Fatal(err)
	}
	if len(plans) != 3 || plans[0].Name != "default" || plans[1].Name != "free" || plans[2].Name != "pro" {
		t.Fatalf("Plans = %+v", plans)
	}
	want.Keys = 2
	if !reflect.DeepEqual(plans[2], want) {
		t.Errorf("listed pro = %+v\nwant %+v", plans[2], want)
	}
	// An answer can be put back as it is.
	again, err := s.PutPlanAt(plans[2], t0.Add(time.Millisecond))
	want.UpdatedAt = t0.Add(time.Millisecond)
	if err != nil || !reflect.DeepEqual(again, want) {
		t.Errorf("put back = %+v %v", again, err)
	}
}

func TestPutPlanRefusals(t *testing.T) {
	s := openTemp(t)
	for _, c := range []struct {
		what     string
		plan     Plan
		fragment string
	}{
		{"no name", Plan{}, "plan.name"},
		{"long name", Plan{Name: strings.Repeat("p", 64)}, "plan.name"},
		{"negative lifetime", Plan{Name: "p", Lifetime: -day}, "lifetime_ms"},
		{"lifetime under a millisecond", Plan{Name: "p", Lifetime: time.Microsecond}, "lifetime_ms"},
		{"weekly quota", Plan{Name: "p", Quota: &Quota{Limit: 1, Period: "weekly"}}, "period"},
		{"zero rate", Plan{Name: "p", RateLimit: Some(RateLimit{Limit: 0, Per: time.Second})}, "rate_limit"},
	} {
		_, err := s.PutPlanAt(c.plan, t0)
		refused(t, c.what, err, c.fragment)
	}
	_, err := s.PutPlanAt(Plan{Name: "p"}, time.UnixMilli(1_767_225_600)) // seconds, taken for ms
	refused(t, "time in seconds", err, "now_ms")
	if plans, err := s.Plans(); err != nil || len(plans) != 0 {
		t.Errorf("refused plans were stored: %+v %v", plans, err)
	}
}

// A plan put by another process is in force on this handle's very next
// check: no reopen, no reload.
func TestPlanPutInAnotherProcessIsInForceOnTheNextCheck(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.db")
	server := openAt(t, path)
	if _, err := server.PutPlanAt(Plan{Name: "pro", Quota: &Quota{Limit: 2, Period: Daily}, RateLimit: Null[RateLimit]()}, t0); err != nil {
		t.Fatal(err)
	}
	k := mustCreate(t, server, KeySpec{Plan: "pro"}, t0)
	for i := 0; i < 2; i++ {
		if r, _ := server.CheckKey(k.Key, t0); !r.OK() {
			t.Fatal(r.Status)
		}
	}
	if r, _ := server.CheckKey(k.Key, t0); r.Status != StatusAPIKeyQuotaExceeded {
		t.Fatalf("quota 2: %v", r.Status)
	}
	if out := runChild(t, "put-plan", path, ""); out != "1\n" {
		t.Errorf("child answered %q", out)
	}
	if r, _ := server.CheckKey(k.Key, t0); !r.OK() || r.QuotaLimit != 5 || r.QuotaRemaining != 2 {
		t.Errorf("after the plan change: %v limit %d remaining %d", r.Status, r.QuotaLimit, r.QuotaRemaining)
	}
}

// -- policies ------------------------------------------------------------------

func TestPolicies(t *testing.T) {
	s := openTemp(t)
	same := func(what string, got Policies, err error, want Policies) {
		t.Helper()
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("%s = %+v %v, want %+v", what, got, err, want)
		}
	}
	off := Policies{Idle: Null[time.Duration](), Abuse: Null[AbusePolicy](), Rotated: "always"}
	p, err := s.Policy()
	same("defaults", p, err, off)
	p, err = s.SetPolicy(Policies{Idle: Some(90 * day)})
	same("idle 90 days", p, err, Policies{Idle: Some(90 * day), Abuse: Null[AbusePolicy](), Rotated: "always"})
	abuse := AbusePolicy{Limit: 3, Window: 10 * time.Minute}
	p, err = s.SetPolicy(Policies{Abuse: Some(abuse)})
	same("abuse, idle unchanged", p, err, Policies{Idle: Some(90 * day), Abuse: Some(abuse), Rotated: "always"})
	p, err = s.SetPolicy(Policies{})
	same("nothing changed", p, err, Policies{Idle: Some(90 * day), Abuse: Some(abuse), Rotated: "always"})
	p, err = s.SetPolicy(Policies{Idle: Null[time.Duration]()})
	same("idle off", p, err, Policies{Idle: Null[time.Duration](), Abuse: Some(abuse), Rotated: "always"})
	p, err = s.SetPolicy(Policies{Idle: Some(7 * day), Abuse: Null[AbusePolicy]()})
	same("idle 7 days, abuse off", p, err, Policies{Idle: Some(7 * day), Abuse: Null[AbusePolicy](), Rotated: "always"})
	p, err = s.Policy()
	same("Policy", p, err, Policies{Idle: Some(7 * day), Abuse: Null[AbusePolicy](), Rotated: "always"})

	_, err = s.SetPolicy(Policies{Idle: Some(time.Duration(0))})
	refused(t, "idle 0 days", err, "policy.idle")
	_, err = s.SetPolicy(Policies{Idle: Some(36501 * day)})
	refused(t, "idle over 100 years", err, "policy.idle")
	_, err = s.SetPolicy(Policies{Idle: Some(day + hour)})
	refused(t, "idle not whole days", err, "whole number of days")
	_, err = s.SetPolicy(Policies{Abuse: Some(AbusePolicy{Limit: 5, Window: 10 * time.Millisecond})})
	refused(t, "abuse window under a second", err, "policy.abuse")
	_, err = s.SetPolicy(Policies{Abuse: Some(AbusePolicy{Limit: 0, Window: time.Minute})})
	refused(t, "abuse limit 0", err, "policy.abuse")
	p, err = s.Policy()
	same("after refusals", p, err, Policies{Idle: Some(7 * day), Abuse: Null[AbusePolicy](), Rotated: "always"})
}

func TestIdlePolicyRevokesUnusedKeys(t *testing.T) {
	// A zero flush interval: counts and policy revocations reach the
	// database at every check.
	s, err := OpenWithOptions(filepath.Join(t.TempDir(), "keys.db"), Options{FlushInterval: Some(time.Duration(0))})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	used := mustCreate(t, s, KeySpec{ExpiresAt: Null[time.Time]()}, t0)
	unused := mustCreate(t, s, KeySpec{ExpiresAt: Null[time.Time]()}, t0)
	if r, _ := s.CheckKey(used.Key, t0.Add(day)); !r.OK() {
		t.Fatal(r.Status)
	}
	if _, err := s.SetPolicyAt(Policies{Idle: Some(30 * day)}, t0); err != nil {
		t.Fatal(err)
	}
	if r, _ := s.CheckKey(unused.Key, t0.Add(30*day-time.Millisecond)); !r.OK() {
		t.Errorf("29.99 days unused: %v", r.Status)
	}
	if r, _ := s.CheckKey(used.Key, t0.Add(31*day+5*time.Millisecond)); r.Status != StatusAPIKeyRevoked {
		t.Errorf("30 days after its last use: %v", r.Status)
	}
	rec, err := s.GetKey(used.Record.ID)
	if err != nil {
		t.Fatal(err)
	}
	if rec.RevokedReason == nil || *rec.RevokedReason != "idle" || *rec.RevokedAtMS != ms(t0.Add(31*day)) {
		t.Errorf("idle revocation: %s", rec.Raw)
	}
}

func TestAbusePolicySetInAnotherProcessRevokesHere(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.db")
	server, err := OpenWithOptions(path, Options{FlushInterval: Some(time.Duration(0))})
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	k := mustCreate(t, server, KeySpec{RateLimit: Some(RateLimit{Limit: 1, Per: time.Minute})}, t0)
	runChild(t, "set-abuse", path, "")
	if r, _ := server.CheckKey(k.Key, t0); !r.OK() {
		t.Fatal(r.Status)
	}
	for i := 1; i <= 4; i++ {
		if r, _ := server.CheckKey(k.Key, t0.Add(time.Duration(i)*time.Millisecond)); r.Status != StatusRateLimitExceeded {
			t.Fatalf("refusal %d: %v", i, r.Status)
		}
	}
	if r, _ := server.CheckKey(k.Key, t0.Add(time.Minute)); r.Status != StatusAPIKeyRevoked {
		t.Errorf("over the abuse limit: %v", r.Status)
	}
	rec, err := server.GetKey(k.Record.ID)
	if err != nil {
		t.Fatal(err)
	}
	if rec.RevokedReason == nil || *rec.RevokedReason != "abuse" || *rec.RevokedAtMS != ms(t0.Add(4*time.Millisecond)) {
		t.Errorf("abuse revocation: %s", rec.Raw)
	}
}

// -- usage and metrics -----------------------------------------------------------

func TestUsageHistory(t *testing.T) {
	s := openTemp(t)
	k := mustCreate(t, s, KeySpec{Quota: &Quota{Limit: 3, Period: Daily}, RateLimit: Null[RateLimit]()}, t0)
	before := nextMidnight.Add(-time.Millisecond)
	for i := 0; i < 3; i++ {
		if r, _ := s.CheckKey(k.Key, before); !r.OK() {
			t.Fatal(r.Status)
		}
	}
	if r, _ := s.CheckKey(k.Key, before); r.Status != StatusAPIKeyQuotaExceeded {
		t.Fatal(r.Status)
	}
	if r, _ := s.CheckKey(k.Key, nextMidnight); !r.OK() {
		t.Fatal(r.Status)
	}
	if err := s.RevokeKeyAt(k.Record.ID, nextMidnight.Add(10*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if r, _ := s.CheckKey(k.Key, nextMidnight.Add(20*time.Millisecond)); r.Status != StatusAPIKeyRevoked {
		t.Fatal(r.Status)
	}

	u, err := s.Usage(k.Record.ID, t0.Add(-24*hour), nextMidnight)
	if err != nil {
		t.Fatal(err)
	}
	if u.KeyID != k.Record.ID || !u.LastUsedAt.Equal(nextMidnight) || len(u.Days) != 3 {
		t.Fatalf("usage = %+v", u)
	}
	dates := []string{"2025-03-13", "2025-03-14", "2025-03-15"}
	for i, d := range u.Days {
		if d.Date != dates[i] || !d.Start.Equal(time.Date(2025, 3, 13+i, 0, 0, 0, 0, time.UTC)) || d.Start.Location() != time.UTC {
			t.Errorf("day %d = %s %v", i, d.Date, d.Start)
		}
	}
	zero := map[Status]int64{StatusAPIKeyExpired: 0, StatusAPIKeyRevoked: 0, StatusAPIKeyQuotaExceeded: 0, StatusRateLimitExceeded: 0}
	if u.Days[0].Admitted != 0 || !reflect.DeepEqual(u.Days[0].Rejected, zero) {
		t.Errorf("a day without use: %+v", u.Days[0])
	}
	zero[StatusAPIKeyQuotaExceeded] = 1
	if u.Days[1].Admitted != 3 || !reflect.DeepEqual(u.Days[1].Rejected, zero) {
		t.Errorf("the day of the quota: %+v", u.Days[1])
	}
	if u.Days[2].Admitted != 1 || u.Days[2].Rejected[StatusAPIKeyRevoked] != 1 {
		t.Errorf("the day of the revocation: %+v", u.Days[2])
	}

	fresh := mustCreate(t, s, KeySpec{}, t0)
	if u, err := s.Usage(fresh.Record.ID, t0, t0); err != nil || !u.LastUsedAt.IsZero() || len(u.Days) != 1 {
		t.Errorf("an unused key: %+v %v", u, err)
	}
	_, err = s.Usage(k.Record.ID, nextMidnight, t0)
	refused(t, "to before from", err, "to_ms")
	_, err = s.Usage(k.Record.ID, t0, time.Unix(1, 0))
	refused(t, "time in seconds", err, "to_ms")
	_, err = s.Usage(k.Record.ID+"\x00x", t0, t0)
	refused(t, "id with a NUL", err, "NUL")
	if _, err := s.Usage("key_nope", t0, t0); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown key: %v", err)
	}
}

func TestMetricsText(t *testing.T) {
	s := openTemp(t)
	now := time.Now() // metrics describe the present
	if _, err := s.PutPlanAt(Plan{Name: "pro", Quota: &Quota{Limit: 10, Period: Daily}}, now); err != nil {
		t.Fatal(err)
	}
	k := mustCreate(t, s, KeySpec{Plan: "pro"}, now)
	gone := mustCreate(t, s, KeySpec{}, now)
	if err := s.RevokeKeyAt(gone.Record.ID, now); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, s, KeySpec{ExpiresAt: Some(now.Add(-time.Millisecond))}, now.Add(-10*time.Millisecond))
	for i := 0; i < 4; i++ {
		if r, _ := s.CheckKey(k.Key, now); !r.OK() {
			t.Fatal(r.Status)
		}
	}
	s.CheckKey(gone.Key, now)
	s.CheckKey("not-a-key-at-all", now)
	s.CheckKey("", now)
	text, err := s.MetricsText()
	if err != nil {
		t.Fatal(err)
	}
	hasLines(t, text,
		"# TYPE ms_auth_checks_total counter",
		`ms_auth_checks_total{status="ok"} 4`,
		`ms_auth_checks_total{status="api_key_revoked"} 1`,
		`ms_auth_unmatched_checks_total{status="api_key_missing"} 1`,
		`ms_auth_unmatched_checks_total{status="api_key_invalid"} 1`,
		`ms_auth_keys{state="active"} 1`,
		`ms_auth_keys{state="expired"} 1`,
		`ms_auth_keys{state="revoked"} 1`,
		`ms_auth_quota_used{plan="pro"} 4`,
		`ms_auth_quota_limit{plan="pro"} 10`,
		"ms_auth_flush_failures_total 0",
	)
}

func hasLines(t *testing.T, text string, want ...string) {
	t.Helper()
	lines := strings.Split(text, "\n")
	for _, w := range want {
		found := false
		for _, l := range lines {
			found = found || l == w
		}
		if !found {
			t.Errorf("%q not in\n%s", w, text)
		}
	}
}

func TestUsageAndMetricsCountOtherProcesses(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.db")
	portal := openAt(t, path)
	since := time.Now()
	k := mustCreate(t, portal, KeySpec{RateLimit: Null[RateLimit]()}, since)
	runChild(t, "check", path, k.Key)
	u, err := portal.Usage(k.Record.ID, since, time.Now()) // two days across a UTC midnight
	if err != nil {
		t.Fatal(err)
	}
	var admitted int64
	for _, d := range u.Days {
		admitted += d.Admitted
	}
	if admitted != 3 || u.LastUsedAt.Before(since.Truncate(time.Millisecond)) {
		t.Errorf("usage of the other process's checks: %+v", u)
	}
	text, err := portal.MetricsText()
	if err != nil {
		t.Fatal(err)
	}
	hasLines(t, text,
		`ms_auth_checks_total{status="ok"} 3`,                        // every process
		`ms_auth_unmatched_checks_total{status="api_key_invalid"} 0`, // this one
	)
}

func TestMetricsHandler(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "keys.db"))
	if err != nil {
		t.Fatal(err)
	}
	k := mustCreate(t, s, KeySpec{}, time.Now())
	s.CheckKeyNow(k.Key)
	var failures []error
	var mu sync.Mutex
	srv := httptest.NewServer(MetricsHandler(s, WithErrorHandler(func(_ *http.Request, err error) {
		mu.Lock()
		failures = append(failures, err)
		mu.Unlock()
	})))
	defer srv.Close()

	fetch := func(method string) (*http.Response, string) {
		t.Helper()
		req, _ := http.NewRequest(method, srv.URL+"/metrics", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp, string(body)
	}
	resp, body := fetch(http.MethodGet)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/plain; version=0.0.4" ||
		resp.Header.Get("Content-Length") != strconv.Itoa(len(body)) {
		t.Errorf("GET /metrics: %d %v", resp.StatusCode, resp.Header)
	}
	hasLines(t, body, `ms_auth_checks_total{status="ok"} 1`, `ms_auth_keys{state="active"} 1`)
	if resp, body := fetch(http.MethodHead); resp.StatusCode != 200 || body != "" {
		t.Errorf("HEAD /metrics: %d %q", resp.StatusCode, body)
	}
	if resp, _ := fetch(http.MethodPost); resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "GET, HEAD" {
		t.Errorf("POST /metrics: %d %v", resp.StatusCode, resp.Header)
	}

	_ = s.Close()
	resp, body = fetch(http.MethodGet)
	if resp.StatusCode != http.StatusServiceUnavailable || body != "ms-auth metrics unavailable: store_not_open\n" {
		t.Errorf("closed store: %d %q", resp.StatusCode, body)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(failures) != 1 || !errors.Is(failures[0], ErrNotOpen) {
		t.Errorf("error handler saw %v", failures)
	}
}

// -- closed stores and Close during calls -----------------------------------------

func lifecycleCalls(s *Store, id string) map[string]func() error {
	return map[string]func() error{
		"SetActor": func() error { return s.SetActor("tests") },
		"RotateKey": func() error {
			_, err := s.RotateKeyAt(id, hour, t0)
			return err
		},
		"PutPlan":   func() error { _, err := s.PutPlanAt(Plan{Name: "pro"}, t0); return err },
		"Plans":     func() error { _, err := s.Plans(); return err },
		"SetPolicy": func() error { _, err := s.SetPolicyAt(Policies{Idle: Some(9 * day)}, t0); return err },
		"Policy":    func() error { _, err := s.Policy(); return err },
		"Audit":     func() error { _, err := s.Audit(AuditFilter{}); return err },
		"Usage":     func() error { _, err := s.Usage(id, t0, t0); return err },
		"MetricsText": func() error {
			_, err := s.MetricsText()
			return err
		},
	}
}

func TestLifecycleCallsAfterClose(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "keys.db"))
	if err != nil {
		t.Fatal(err)
	}
	k := mustCreate(t, s, KeySpec{}, t0)
	calls := lifecycleCalls(s, k.Record.ID)
	_ = s.Close()
	for name, call := range calls {
		if err := call(); !errors.Is(err, ErrNotOpen) {
			t.Errorf("%s after Close: %v", name, err)
		}
	}
	if _, err := OpenWithOptions(filepath.Join(t.TempDir(), "no", "dir", "keys.db"), Options{}); !errors.Is(err, ErrStore) {
		t.Errorf("OpenWithOptions in a missing directory: %v", err)
	}
}

// Close while goroutines make lifecycle calls: each call either completes or
// answers ErrNotOpen, and the race detector sees no race.
func TestCloseDuringLifecycleCalls(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "keys.db"))
	if err != nil {
		t.Fatal(err)
	}
	k := mustCreate(t, s, KeySpec{}, t0)
	calls := lifecycleCalls(s, k.Record.ID)
	delete(calls, "RotateKey") // once only: tested above
	var wg sync.WaitGroup
	var done, closed, other int64
	var firstOther atomic.Value
	for name, call := range calls {
		wg.Add(1)
		go func(name string, call func() error) {
			defer wg.Done()
			for {
				switch err := call(); {
				case err == nil:
					atomic.AddInt64(&done, 1)
				case errors.Is(err, ErrNotOpen):
					atomic.AddInt64(&closed, 1)
					return
				default:
					atomic.AddInt64(&other, 1)
					firstOther.Store(name + ": " + err.Error())
					return
				}
			}
		}(name, call)
	}
	time.Sleep(100 * time.Millisecond)
	_ = s.Close()
	wg.Wait()
	if done == 0 || closed != int64(len(calls)) || other != 0 {
		t.Fatalf("done %d, closed %d, other %d (%v)", done, closed, other, firstOther.Load())
	}
}

func TestKeyIDsWithANULAreRefused(t *testing.T) {
	// C would read "key_x\x00..." as "key_x": another key than the one named.
	s := openTemp(t)
	k := mustCreate(t, s, KeySpec{}, t0)
	id := k.Record.ID + "\x00x"
	_, err := s.GetKey(id)
	refused(t, "GetKey", err, "NUL")
	_, err = s.UpdateKey(id, KeyPatch{Name: Some("n")})
	refused(t, "UpdateKey", err, "NUL")
	refused(t, "RevokeKey", s.RevokeKey(id), "NUL")
	if rec, err := s.GetKey(k.Record.ID); err != nil || rec.Revoked() {
		t.Errorf("the key named before the NUL changed: %+v %v", rec, err)
	}
}

// Every function of the C ABI header is called by this package, except the
// process-wide simple form (ms_open, ms_auth_check, ms_close), which a Store
// does with a handle.
func TestEveryABIFunctionIsWrapped(t *testing.T) {
	include := os.Getenv("MS_AUTH_INCLUDE_DIR")
	if include == "" {
		include = filepath.Join("..", "..", "..", "include")
	}
	header, err := os.ReadFile(filepath.Join(include, "ms_auth.h"))
	if err != nil {
		t.Fatal(err)
	}
	capi, err := os.ReadFile("capi.go")
	if err != nil {
		t.Fatal(err)
	}
	declared := regexp.MustCompile(`(?m)^(?:const )?\w+ \*?(ms_\w+)\(`).FindAllSubmatch(header, -1)
	names := map[string]bool{}
	for _, m := range declared {
		names[string(m[1])] = true
	}
	for _, n := range []string{"ms_store_open", "ms_store_open_v2", "ms_store_check", "ms_key_rotate", "ms_metrics_text"} {
		if !names[n] {
			t.Fatalf("the header parse missed %s: found %v", n, names)
		}
	}
	simple := map[string]bool{"ms_open": true, "ms_auth_check": true, "ms_close": true}
	// A v1 function whose _v2 does all it does and more: the binding calls the _v2.
	superseded := map[string]bool{"ms_key_revoke": true}
	for n := range names {
		if superseded[n] && !strings.Contains(string(capi), n+"_v2(") {
			t.Errorf("%s is superseded but its _v2 is not called by the Go binding", n)
		}
		if !simple[n] && !superseded[n] && !strings.Contains(string(capi), n+"(") {
			t.Errorf("%s is not called by the Go binding", n)
		}
	}
}

// Issue 21, item 3: every record carries the state the library computes, as a
// typed KeyState with its reason and grace end; a rotated key past its grace
// is revoked (rotated) before any flush records it.
func TestRecordsCarryTheComputedState(t *testing.T) {
	s := openTemp(t)
	now := time.Now()
	past := mustCreate(t, s, KeySpec{}, now.Add(-time.Minute))
	rotating := mustCreate(t, s, KeySpec{}, now)
	successor, err := s.RotateKeyAt(past.Record.ID, time.Second, now.Add(-10*time.Second))
	if err != nil || successor.Record.State != StateActive {
		t.Fatalf("RotateKeyAt: %+v %v", successor.Record, err)
	}
	if _, err := s.RotateKeyAt(rotating.Record.ID, 24*time.Hour, now); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetKey(past.Record.ID)
	if err != nil || got.State != StateRevoked || got.StateReason == nil || *got.StateReason != "rotated" ||
		!got.Revoked() || got.RevokedAtMS != nil || got.State.Admitted() {
		t.Errorf("rotated past its grace: %+v %v", got, err)
	}
	list, err := s.ListKeys(ListFilter{})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range list {
		if r.ID == past.Record.ID && (r.State != StateRevoked || *r.StateReason != "rotated") {
			t.Errorf("listed: %+v", r)
		}
	}
	r, err := s.GetKey(rotating.Record.ID)
	if err != nil || r.State != StateRotating || r.GraceEndsAtMS == nil || *r.GraceEndsAtMS != ms(now.Add(24*time.Hour)) ||
		!r.State.Admitted() {
		t.Errorf("in its grace: %+v %v", r, err)
	}
	soon := mustCreate(t, s, KeySpec{ExpiresAt: Some(now.Add(24 * time.Hour))}, now)
	if soon.Record.State != StateExpiring {
		t.Errorf("expires tomorrow: %+v", soon.Record)
	}
}

// Issue 21, item 6: once plans are defined, a plan that is none of them is
// refused with their names, unless NewPlan says a new label is meant.
func TestAnUnknownPlanIsRefusedOncePlansAreDefined(t *testing.T) {
	s := openTemp(t)
	early := mustCreate(t, s, KeySpec{Plan: "beta"}, t0) // no plan defined yet
	if _, err := s.PutPlanAt(Plan{Name: "pro", Quota: &Quota{Limit: 5, Period: Daily}}, t0); err != nil {
		t.Fatal(err)
	}
	_, err := s.CreateKeyAt(KeySpec{Plan: "prp"}, t0)
	refused(t, "CreateKeyAt", err, `"prp"`, "pro", "new_plan")
	_, err = s.UpdateKey(early.Record.ID, KeyPatch{Plan: Some("prp")})
	refused(t, "UpdateKey", err, "pro")
	c := mustCreate(t, s, KeySpec{Plan: "prp", NewPlan: true}, t0)
	if *c.Record.Plan != "prp" || c.Record.Quota != nil {
		t.Errorf("a new label: %+v", c.Record)
	}
	r, err := s.UpdateKey(early.Record.ID, KeyPatch{Plan: Some("gold"), NewPlan: true})
	if err != nil || *r.Plan != "gold" {
		t.Errorf("UpdateKey with NewPlan: %+v %v", r, err)
	}
}

// Issue 21, item 9: names, plans and actors holding a bidirectional override
// are refused, naming the field and the code point.
func TestBidiControlsAreRefused(t *testing.T) {
	s := openTemp(t)
	_, err := s.CreateKeyAt(KeySpec{Name: "invoice\u202efdp.exe"}, t0)
	refused(t, "CreateKeyAt", err, "name contains U+202E")
	_, err = s.PutPlanAt(Plan{Name: "pro\u2066"}, t0)
	refused(t, "PutPlanAt", err, "plan.name contains U+2066")
	refused(t, "SetActor", s.SetActor("ops:\u200fbob"), "actor contains U+200F")
}
