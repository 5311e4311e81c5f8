package msauth

// #include "ms_auth.h"
import "C"

import (
	"context"
	"encoding/json"
	"time"
)

// Key lifecycle and monitoring: store options, the audit actor, rotation,
// plans, revocation policies, the audit log, usage history and metrics (the
// functions added to the C ABI after v1).

// Durability says when admitted checks reach the database.
type Durability string

const (
	// DurabilityBatched (the default): a count is in the shared counters file
	// at once and reaches the database within a flush interval.
	DurabilityBatched Durability = "batched"
	// DurabilityStrict also writes every admitted check to the database, in
	// its own transaction, before answering it.
	DurabilityStrict Durability = "strict"
)

// Options are the store options of OpenWithOptions; the zero Options are the
// library's defaults. Durations are sent in whole milliseconds.
type Options struct {
	// FlushInterval: counts reach the database at most this often (and at
	// Close). Absent: 1 s; at most an hour; Some(0) writes at every check.
	FlushInterval Opt[time.Duration]
	// Durability: "" is the default, DurabilityBatched.
	Durability Durability
	// BusyTimeout: how long an admin call (or a strict check) waits for
	// another process's write lock. Absent: 5 s; at most 10 minutes.
	BusyTimeout Opt[time.Duration]
	// Create: whether a path with no store gets a new one. Absent: true.
	// Some(false) opens an existing store only: a path with no store is
	// ErrStore, naming the path, and nothing is written (for tools that only
	// read, where a mistyped path must not become an empty store).
	Create Opt[bool]
}

// MarshalJSON writes the options as ms_store_open_v2 takes them.
func (o Options) MarshalJSON() ([]byte, error) {
	var w objWriter
	writeOpt(&w, "flush_interval_ms", optDurationMillis(o.FlushInterval))
	if o.Durability != "" {
		w.member("durability", string(o.Durability))
	}
	writeOpt(&w, "busy_timeout_ms", optDurationMillis(o.BusyTimeout))
	writeOpt(&w, "create", o.Create)
	return w.finish()
}

// SetActor names the actor that the audit log records for this Store's admin
// calls (default: the program, its pid and uid), e.g. "portal:alice". At most
// 200 bytes, without control characters, bidirectional controls (U+202E...)
// or invisible characters.
func (s *Store) SetActor(actor string) error {
	// Only this handle's memory changes: nothing to wait for, no context.
	return s.call(func(h *C.ms_store) error { return cSetActor(h, actor) })
}

// DefaultGrace is the library's grace for the old key of a rotation.
const DefaultGrace = 24 * time.Hour

// RotateKey is RotateKeyContext without a context.
func (s *Store) RotateKey(id string, grace time.Duration) (Created, error) {
	return s.RotateKeyAtContext(context.Background(), id, grace, time.Now())
}

// RotateKeyAt is RotateKeyAtContext without a context.
func (s *Store) RotateKeyAt(id string, grace time.Duration, now time.Time) (Created, error) {
	return s.RotateKeyAtContext(context.Background(), id, grace, now)
}

// RotateKeyContext replaces the key with a new one of the same policy, plan
// and meta that counts against the same quota (the customer's quota is not
// reset). The old key keeps working for grace (0: it ends at once), then
// answers api_key_revoked. Created.Key is the new plaintext key, shown this
// once.
func (s *Store) RotateKeyContext(ctx context.Context, id string, grace time.Duration) (Created, error) {
	return s.RotateKeyAtContext(ctx, id, grace, time.Now())
}

// RotateKeyAtContext is RotateKeyContext at an explicit time (the grace
// counts from it).
func (s *Store) RotateKeyAtContext(ctx context.Context, id string, grace time.Duration, now time.Time) (Created, error) {
	opts, err := json.Marshal(struct {
		GraceMS int64 `json:"grace_ms"`
	}{grace.Milliseconds()})
	if err != nil {
		return Created{}, invalidArgument("rotate options", err)
	}
	var js []byte
	if err := s.with(ctx, func(h *C.ms_store) (e error) {
		js, e = cKeyRotate(h, id, opts, now.UnixMilli())
		return e
	}); err != nil {
		return Created{}, err
	}
	return parseCreated(js)
}

// Plan is a named set of limits: keys on it that set no quota (or rate limit)
// of their own follow the plan's, from their next check in every process.
type Plan struct {
	Name  string
	Quota *Quota // nil: no quota
	// RateLimit: absent (in PutPlan) is the store default, 60 per minute;
	// Null is no rate limit. Answers hold Some or Null.
	RateLimit Opt[RateLimit]
	// Lifetime of keys created on the plan without an expiry; 0: the
	// store's default (365 days). Sent in whole milliseconds.
	Lifetime time.Duration

	// Set in answers, ignored by PutPlan.
	UpdatedAt time.Time
	Keys      int64 // how many keys are on the plan
}

// spec writes the plan as ms_plan_put takes it.
func (p Plan) spec() ([]byte, error) {
	var w objWriter
	w.member("name", p.Name)
	if p.Quota != nil {
		w.member("quota", p.Quota)
	}
	writeOpt(&w, "rate_limit", p.RateLimit)
	if p.Lifetime != 0 {
		w.member("lifetime_ms", p.Lifetime.Milliseconds())
	}
	return w.finish()
}

type planJSON struct {
	Name        string     `json:"name"`
	Quota       *Quota     `json:"quota"`
	RateLimit   *RateLimit `json:"rate_limit"`
	LifetimeMS  *int64     `json:"lifetime_ms"`
	UpdatedAtMS int64      `json:"updated_at_ms"`
	Keys        int64      `json:"keys"`
}

func (j planJSON) plan() Plan {
	p := Plan{Name: j.Name, Quota: j.Quota, RateLimit: Null[RateLimit](), UpdatedAt: utcMillis(j.UpdatedAtMS),
		Keys: j.Keys}
	if j.RateLimit != nil {
		p.RateLimit = Some(*j.RateLimit)
	}
	if j.LifetimeMS != nil {
		p.Lifetime = time.Duration(*j.LifetimeMS) * time.Millisecond
	}
	return p
}

// PutPlan is PutPlanContext without a context.
func (s *Store) PutPlan(p Plan) (Plan, error) {
	return s.PutPlanAtContext(context.Background(), p, time.Now())
}

// PutPlanAt is PutPlanAtContext without a context.
func (s *Store) PutPlanAt(p Plan, now time.Time) (Plan, error) {
	return s.PutPlanAtContext(context.Background(), p, now)
}

// PutPlanContext creates or replaces a plan now, and answers it as stored.
func (s *Store) PutPlanContext(ctx context.Context, p Plan) (Plan, error) {
	return s.PutPlanAtContext(ctx, p, time.Now())
}

// PutPlanAtContext is PutPlanContext at an explicit time (the plan's
// UpdatedAt).
func (s *Store) PutPlanAtContext(ctx context.Context, p Plan, now time.Time) (Plan, error) {
	body, err := p.spec()
	if err != nil {
		return Plan{}, invalidArgument("plan", err)
	}
	var js []byte
	if err := s.with(ctx, func(h *C.ms_store) (e error) {
		js, e = cPlanPut(h, body, now.UnixMilli())
		return e
	}); err != nil {
		return Plan{}, err
	}
	var j planJSON
	if err := json.Unmarshal(js, &j); err != nil {
		return Plan{}, badAnswer(err)
	}
	return j.plan(), nil
}

// Plans is PlansContext without a context.
func (s *Store) Plans() ([]Plan, error) { return s.PlansContext(context.Background()) }

// PlansContext lists every plan, by name.
func (s *Store) PlansContext(ctx context.Context) ([]Plan, error) {
	var js []byte
	if err := s.with(ctx, func(h *C.ms_store) (e error) {
		js, e = cPlanList(h)
		return e
	}); err != nil {
		return nil, err
	}
	var l struct {
		Plans []planJSON `json:"plans"`
	}
	if err := json.Unmarshal(js, &l); err != nil {
		return nil, badAnswer(err)
	}
	out := make([]Plan, len(l.Plans))
	for i, j := range l.Plans {
		out[i] = j.plan()
	}
	return out, nil
}

// Policies are the store-wide revocation policies, enforced by every check in
// every process. In SetPolicy an absent member is left as it is and Null turns
// that policy off; answers hold Some or Null for each.
type Policies struct {
	// Idle revokes keys unused (or never used) for this long: whole days,
	// 1 to 36,500.
	Idle Opt[time.Duration]
	// Abuse revokes a key refused by its rate limit more than Limit times
	// within Window.
	Abuse Opt[AbusePolicy]
	// Rotated is "always" in answers: a rotated key is revoked when its grace
	// ends. Ignored by SetPolicy.
	Rotated string
}

// AbusePolicy revokes a key refused by its rate limit more than Limit times
// within Window (1 s to 31 days, whole milliseconds).
type AbusePolicy struct {
	Limit  int64
	Window time.Duration
}

const day = 24 * time.Hour

// change writes the policies as ms_policy_put takes them.
func (p Policies) change() ([]byte, error) {
	var w objWriter
	switch d, ok := p.Idle.Get(); {
	case p.Idle.IsNull():
		w.raw("idle", []byte("null"))
	case ok && d%day != 0:
		return nil, invalidArgument("policy idle must be a whole number of days, not "+d.String(), nil)
	case ok:
		w.member("idle", struct {
			Days int64 `json:"days"`
		}{int64(d / day)})
	}
	switch a, ok := p.Abuse.Get(); {
	case p.Abuse.IsNull():
		w.raw("abuse", []byte("null"))
	case ok:
		w.member("abuse", abuseJSON{a.Limit, a.Window.Milliseconds()})
	}
	return w.finish()
}

type abuseJSON struct {
	Limit    int64 `json:"limit"`
	WindowMS int64 `json:"window_ms"`
}

func parsePolicies(js []byte) (Policies, error) {
	var j struct {
		Idle *struct {
			Days int64 `json:"days"`
		} `json:"idle"`
		Abuse   *abuseJSON `json:"abuse"`
		Rotated string     `json:"rotated"`
	}
	if err := json.Unmarshal(js, &j); err != nil {
		return Policies{}, badAnswer(err)
	}
	p := Policies{Idle: Null[time.Duration](), Abuse: Null[AbusePolicy](), Rotated: j.Rotated}
	if j.Idle != nil {
		p.Idle = Some(time.Duration(j.Idle.Days) * day)
	}
	if j.Abuse != nil {
		p.Abuse = Some(AbusePolicy{Limit: j.Abuse.Limit, Window: time.Duration(j.Abuse.WindowMS) * time.Millisecond})
	}
	return p, nil
}

// SetPolicy is SetPolicyContext without a context.
func (s *Store) SetPolicy(p Policies) (Policies, error) {
	return s.SetPolicyAtContext(context.Background(), p, time.Now())
}

// SetPolicyAt is SetPolicyAtContext without a context.
func (s *Store) SetPolicyAt(p Policies, now time.Time) (Policies, error) {
	return s.SetPolicyAtContext(context.Background(), p, now)
}

// SetPolicyContext changes the revocation policies now, and answers those in
// force.
func (s *Store) SetPolicyContext(ctx context.Context, p Policies) (Policies, error) {
	return s.SetPolicyAtContext(ctx, p, time.Now())
}

// SetPolicyAtContext is SetPolicyContext at an explicit time (for the audit
// log).
func (s *Store) SetPolicyAtContext(ctx context.Context, p Policies, now time.Time) (Policies, error) {
	body, err := p.change()
	if err != nil {
		return Policies{}, err
	}
	var js []byte
	if err := s.with(ctx, func(h *C.ms_store) (e error) {
		js, e = cPolicyPut(h, body, now.UnixMilli())
		return e
	}); err != nil {
		return Policies{}, err
	}
	return parsePolicies(js)
}

// Policy is PolicyContext without a context.
func (s *Store) Policy() (Policies, error) { return s.PolicyContext(context.Background()) }

// PolicyContext is the revocation policies in force.
func (s *Store) PolicyContext(ctx context.Context) (Policies, error) {
	var js []byte
	if err := s.with(ctx, func(h *C.ms_store) (e error) {
		js, e = cPolicyGet(h)
		return e
	}); err != nil {
		return Policies{}, err
	}
	return parsePolicies(js)
}

// AuditFilter selects audit events; the zero AuditFilter is the last 1000.
type AuditFilter struct {
	KeyID string    // "": every key, and store-wide actions
	Since time.Time // zero: from the start
	Limit int       // the last Limit events; 0: the library's default, 1000
}

func (f AuditFilter) json() ([]byte, error) {
	if f.KeyID == "" && f.Since.IsZero() && f.Limit == 0 {
		return nil, nil
	}
	var w objWriter
	if f.KeyID != "" {
		w.member("key_id", f.KeyID)
	}
	if !f.Since.IsZero() {
		w.member("since_ms", f.Since.UnixMilli())
	}
	if f.Limit != 0 {
		w.member("limit", f.Limit)
	}
	return w.finish()
}

// AuditEvent is one admin action: key.create, key.update, key.revoke,
// key.revoke.policy, key.rotate, plan.put or policy.set.
type AuditEvent struct {
	Seq    int64
	At     time.Time
	Actor  string
	Action string
	KeyID  string          // "": a store-wide action (plan.put, policy.set)
	Detail json.RawMessage // the change as the library recorded it; never a plaintext key
	Host   string          // in a fleet, the host where the change was made; "" on a store in no fleet
}

// Audit is AuditContext without a context.
func (s *Store) Audit(filter AuditFilter) ([]AuditEvent, error) {
	return s.AuditContext(context.Background(), filter)
}

// AuditContext is the audit log, oldest first.
func (s *Store) AuditContext(ctx context.Context, filter AuditFilter) ([]AuditEvent, error) {
	fjs, err := filter.json()
	if err != nil {
		return nil, invalidArgument("audit filter", err)
	}
	var js []byte
	if err := s.with(ctx, func(h *C.ms_store) (e error) {
		js, e = cAudit(h, fjs)
		return e
	}); err != nil {
		return nil, err
	}
	var l struct {
		Events []struct {
			Seq    int64           `json:"seq"`
			AtMS   int64           `json:"at_ms"`
			Actor  string          `json:"actor"`
			Action string          `json:"action"`
			KeyID  *string         `json:"key_id"`
			Detail json.RawMessage `json:"detail"`
			Host   *string         `json:"host"`
		} `json:"events"`
	}
	if err := json.Unmarshal(js, &l); err != nil {
		return nil, badAnswer(err)
	}
	out := make([]AuditEvent, len(l.Events))
	for i, e := range l.Events {
		out[i] = AuditEvent{Seq: e.Seq, At: utcMillis(e.AtMS), Actor: e.Actor, Action: e.Action, Detail: e.Detail}
		if e.Host != nil {
			out[i].Host = *e.Host
		}
		if e.KeyID != nil {
			out[i].KeyID = *e.KeyID
		}
	}
	return out, nil
}

// UsageHistory is a key's decisions per UTC day, and its last use.
type UsageHistory struct {
	KeyID      string
	LastUsedAt time.Time  // zero: never used
	Days       []UsageDay // every day of the range, in order
}

// UsageDay is one UTC day of a key's decisions.
type UsageDay struct {
	Date     string    // "2026-11-26"
	Start    time.Time // 00:00 UTC that day
	Admitted int64
	// Rejected counts refusals by status: StatusAPIKeyExpired,
	// StatusAPIKeyRevoked, StatusAPIKeyQuotaExceeded, StatusRateLimitExceeded.
	Rejected map[Status]int64
}

// Usage is UsageContext without a context.
func (s *Store) Usage(id string, from, to time.Time) (UsageHistory, error) {
	return s.UsageContext(context.Background(), id, from, to)
}

// UsageContext is the history of key id from the UTC day of from to that of
// to, counted by every process.
func (s *Store) UsageContext(ctx context.Context, id string, from, to time.Time) (UsageHistory, error) {
	var js []byte
	if err := s.with(ctx, func(h *C.ms_store) (e error) {
		js, e = cUsage(h, id, from.UnixMilli(), to.UnixMilli())
		return e
	}); err != nil {
		return UsageHistory{}, err
	}
	var j struct {
		KeyID        string `json:"key_id"`
		LastUsedAtMS *int64 `json:"last_used_at_ms"`
		Days         []struct {
			Date     string           `json:"date"`
			StartMS  int64            `json:"start_ms"`
			Admitted int64            `json:"admitted"`
			Rejected map[string]int64 `json:"rejected"`
		} `json:"days"`
	}
	if err := json.Unmarshal(js, &j); err != nil {
		return UsageHistory{}, badAnswer(err)
	}
	u := UsageHistory{KeyID: j.KeyID, Days: make([]UsageDay, len(j.Days))}
	if j.LastUsedAtMS != nil {
		u.LastUsedAt = utcMillis(*j.LastUsedAtMS)
	}
	for i, d := range j.Days {
		ud := UsageDay{Date: d.Date, Start: utcMillis(d.StartMS), Admitted: d.Admitted,
			Rejected: make(map[Status]int64, len(d.Rejected))}
		for code, n := range d.Rejected {
			// A status a newer library adds has no Status here: left out.
			if st, ok := statusByCode[code]; ok {
				ud.Rejected[st] = n
			}
		}
		u.Days[i] = ud
	}
	return u, nil
}

var statusByCode = func() map[string]Status {
	m := make(map[string]Status, len(knownStatuses))
	for _, s := range knownStatuses {
		m[s.String()] = s
	}
	return m
}()

// MetricsText is MetricsTextContext without a context.
func (s *Store) MetricsText() (string, error) { return s.MetricsTextContext(context.Background()) }

// MetricsTextContext is the Prometheus text exposition (version 0.0.4) of the
// store: checks by status (every process), unmatched checks (this process),
// keys by state, quota use per plan, flush failures. MetricsHandler serves it
// under the request's context.
func (s *Store) MetricsTextContext(ctx context.Context) (string, error) {
	var text []byte
	if err := s.with(ctx, func(h *C.ms_store) (e error) {
		text, e = cMetricsText(h)
		return e
	}); err != nil {
		return "", err
	}
	return string(text), nil
}

func utcMillis(ms int64) time.Time { return time.UnixMilli(ms).UTC() }

func optDurationMillis(o Opt[time.Duration]) Opt[int64] {
	switch o.state {
	case optValue:
		return Some(o.value.Milliseconds())
	case optNull:
		return Null[int64]()
	}
	return Opt[int64]{}
}
