package msauth

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"
)

// Opt is a JSON member that can be absent (the zero value), null, or a value.
// The key spec and patch need all three: an absent rate_limit means the store
// default, a null one means no rate limit.
type Opt[T any] struct {
	state optState
	value T
}

type optState uint8

const (
	optAbsent optState = iota
	optNull
	optValue
)

// Some is an Opt holding v.
func Some[T any](v T) Opt[T] { return Opt[T]{state: optValue, value: v} }

// Null is an Opt that is sent as JSON null.
func Null[T any]() Opt[T] { return Opt[T]{state: optNull} }

// IsAbsent reports the zero Opt: the member is left out.
func (o Opt[T]) IsAbsent() bool { return o.state == optAbsent }

// IsNull reports an explicit null.
func (o Opt[T]) IsNull() bool { return o.state == optNull }

// Get is the value and whether there is one.
func (o Opt[T]) Get() (T, bool) { return o.value, o.state == optValue }

// Env selects the key prefix: ms_live_ or ms_test_.
type Env string

const (
	EnvLive Env = "live"
	EnvTest Env = "test"
)

// Period is a quota period, calendar-aligned in UTC.
type Period string

const (
	Daily   Period = "daily"   // resets at 00:00 UTC
	Monthly Period = "monthly" // resets at 00:00 UTC on the 1st
)

// Quota is a number of requests per calendar period.
type Quota struct {
	Limit  int64  `json:"limit"`
	Period Period `json:"period"`
}

// RateLimit is a token bucket: Burst requests at once, refilled at Limit per
// Per. In a spec, a zero Per or Burst is left out so the library applies its
// default (a minute; Burst = Limit). On the wire Per is window_ms, whole
// milliseconds: a Per with a fraction of a millisecond is refused.
type RateLimit struct {
	Limit int64
	Per   time.Duration
	Burst int64
	// WindowMS is Per in milliseconds; answers fill in both.
	//
	// Deprecated: use Per. A spec may still set WindowMS alone; with both set
	// they must agree.
	WindowMS int64
}

// Window is the bucket's window: Per, or WindowMS when only it is set.
func (r RateLimit) Window() time.Duration {
	if r.Per != 0 {
		return r.Per
	}
	return time.Duration(r.WindowMS) * time.Millisecond
}

// rateLimitJSON is RateLimit as the library's JSON has it.
type rateLimitJSON struct {
	Limit    int64 `json:"limit"`
	WindowMS int64 `json:"window_ms,omitempty"`
	Burst    int64 `json:"burst,omitempty"`
}

// MarshalJSON writes the window in milliseconds (window_ms).
func (r RateLimit) MarshalJSON() ([]byte, error) {
	windowMS := r.WindowMS
	if r.Per != 0 {
		if r.Per%time.Millisecond != 0 {
			return nil, fmt.Errorf("rate limit window %v is not a whole number of milliseconds", r.Per)
		}
		if windowMS != 0 && windowMS != r.Per.Milliseconds() {
			return nil, fmt.Errorf("rate limit Per (%v) and WindowMS (%d) disagree", r.Per, windowMS)
		}
		windowMS = r.Per.Milliseconds()
	}
	return json.Marshal(rateLimitJSON{Limit: r.Limit, WindowMS: windowMS, Burst: r.Burst})
}

// UnmarshalJSON reads window_ms into Per (and the deprecated WindowMS).
func (r *RateLimit) UnmarshalJSON(b []byte) error {
	var j rateLimitJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*r = RateLimit{Limit: j.Limit, Per: time.Duration(j.WindowMS) * time.Millisecond, Burst: j.Burst, WindowMS: j.WindowMS}
	return nil
}

// KeySpec describes a key to create. Every field is optional.
type KeySpec struct {
	Env  Env    // "" is live
	Name string // "" is none
	Plan string // "" is none
	// NewPlan allows Plan to name no defined plan: once any plan is defined,
	// such a name is refused (the error lists the plans) unless NewPlan is set.
	NewPlan bool
	// ExpiresAt: absent is the store's default lifetime (365 days from
	// creation); Null never expires.
	ExpiresAt Opt[time.Time]
	Quota     *Quota // nil: no quota
	// RateLimit: absent is the store default (60 per minute); Null is none.
	RateLimit Opt[RateLimit]
	Meta      json.RawMessage // any JSON value; nil is none
	Key       string          // import this existing plaintext key instead of generating one
}

// MarshalJSON writes the spec as ms_key_create takes it, leaving out absent
// members.
func (s KeySpec) MarshalJSON() ([]byte, error) {
	var w objWriter
	if s.Env != "" {
		w.member("env", string(s.Env))
	}
	if s.Name != "" {
		w.member("name", s.Name)
	}
	if s.Plan != "" {
		w.member("plan", s.Plan)
	}
	if s.NewPlan {
		w.member("new_plan", true)
	}
	writeOpt(&w, "expires_at_ms", optMillis(s.ExpiresAt))
	if s.Quota != nil {
		w.member("quota", s.Quota)
	}
	writeOpt(&w, "rate_limit", s.RateLimit)
	if s.Meta != nil {
		w.member("meta", s.Meta)
	}
	if s.Key != "" {
		w.member("key", s.Key)
	}
	return w.finish()
}

// KeyPatch changes a key: absent fields stay as they are, Null clears one
// (no name, no plan, never expires, no quota, no rate limit, no meta).
type KeyPatch struct {
	Name      Opt[string]
	Plan      Opt[string]
	NewPlan   bool // as in KeySpec
	ExpiresAt Opt[time.Time]
	Quota     Opt[Quota]
	RateLimit Opt[RateLimit]
	Meta      Opt[json.RawMessage]
}

// MarshalJSON writes the patch as ms_key_update takes it.
func (p KeyPatch) MarshalJSON() ([]byte, error) {
	var w objWriter
	writeOpt(&w, "name", p.Name)
	writeOpt(&w, "plan", p.Plan)
	if p.NewPlan {
		w.member("new_plan", true)
	}
	writeOpt(&w, "expires_at_ms", optMillis(p.ExpiresAt))
	writeOpt(&w, "quota", p.Quota)
	writeOpt(&w, "rate_limit", p.RateLimit)
	writeOpt(&w, "meta", p.Meta)
	return w.finish()
}

// ListFilter selects keys by plan and/or env; empty fields do not filter.
type ListFilter struct {
	Plan string `json:"plan,omitempty"`
	Env  Env    `json:"env,omitempty"`
}

// json is the filter for ms_key_list: nil (every key) when empty.
func (f ListFilter) json() ([]byte, error) {
	if f == (ListFilter{}) {
		return nil, nil
	}
	return json.Marshal(f)
}

// Record is a key as the store describes it (never the plaintext key).
type Record struct {
	ID            string          `json:"id"`
	Prefix        string          `json:"prefix"` // a short display prefix, e.g. "ms_live_AbCd"
	Env           Env             `json:"env"`
	Name          *string         `json:"name"` // nil: none
	Plan          *string         `json:"plan"` // nil: none
	CreatedAtMS   int64           `json:"created_at_ms"`
	ExpiresAtMS   *int64          `json:"expires_at_ms"`  // nil: never expires
	RevokedAtMS   *int64          `json:"revoked_at_ms"`  // nil: not revoked
	RevokedReason *string         `json:"revoked_reason"` // nil: none given
	Quota         *Quota          `json:"quota"`          // nil: no quota
	RateLimit     *RateLimit      `json:"rate_limit"`     // nil: no rate limit
	Usage         Usage           `json:"usage"`
	Meta          json.RawMessage `json:"meta"`
	RevokeAtMS    *int64          `json:"revoke_at_ms"` // a scheduled revocation: a rotated key's grace end
	RotatedFrom   *string         `json:"rotated_from"` // the key this one replaced
	RotatedTo     *string         `json:"rotated_to"`   // the key that replaced this one
	FollowsPlan   []string        `json:"follows_plan"` // limits taken from the plan: "quota", "rate_limit"

	// Computed when the record is read, as a check at that instant would
	// decide: the key's state, why it is revoked, when a rotating key's
	// grace ends.
	State         KeyState `json:"state"`
	StateReason   *string  `json:"state_reason"`     // StateRevoked: manual, rotated, idle, abuse or the reason given
	GraceEndsAtMS *int64   `json:"grace_ends_at_ms"` // StateRotating: when it becomes revoked (rotated)

	// Raw is the record's JSON as the library wrote it, including members
	// newer library versions add.
	Raw json.RawMessage `json:"-"`
}

// KeyState is a key's state as every record gives it (Record.State).
type KeyState string

const (
	StateActive   KeyState = "active"   // admitted (within its limits)
	StateExpiring KeyState = "expiring" // admitted, and expires within 7 days
	StateRotating KeyState = "rotating" // replaced by a rotation, admitted until GraceEndsAtMS
	StateRevoked  KeyState = "revoked"  // refused as revoked; StateReason says why
	StateExpired  KeyState = "expired"  // refused as expired
	// StateSuspended is reserved for keys of a suspended customer; no library
	// version produces it yet.
	StateSuspended KeyState = "suspended"
)

// Admitted reports the states in which a check admits the key (within its
// limits).
func (s KeyState) Admitted() bool {
	return s == StateActive || s == StateExpiring || s == StateRotating
}

// Usage is the key's counters.
type Usage struct {
	PeriodStartMS int64  `json:"period_start_ms"` // start of the current quota period
	Used          int64  `json:"used"`            // admitted requests in this period
	Total         int64  `json:"total"`           // admitted requests ever
	LastUsedAtMS  *int64 `json:"last_used_at_ms"` // nil: never used
}

// CreatedAt is CreatedAtMS as a time.
func (r Record) CreatedAt() time.Time { return time.UnixMilli(r.CreatedAtMS) }

// ExpiresAt is the expiry time, and false when the key never expires.
func (r Record) ExpiresAt() (time.Time, bool) {
	if r.ExpiresAtMS == nil {
		return time.Time{}, false
	}
	return time.UnixMilli(*r.ExpiresAtMS), true
}

// Revoked reports a revoked key: its State, which also counts a revocation a
// check enforces before a flush records it (a rotation's grace over, an idle
// key).
func (r Record) Revoked() bool { return r.State == StateRevoked || r.RevokedAtMS != nil }

// Created is the answer to CreateKey: the plaintext key, shown this once,
// and the new record.
type Created struct {
	Key    string
	Record Record
}

func parseRecord(js []byte) (Record, error) {
	var r Record
	if err := json.Unmarshal(js, &r); err != nil {
		return Record{}, badAnswer(err)
	}
	r.Raw = js
	return r, nil
}

func parseCreated(js []byte) (Created, error) {
	r, err := parseRecord(js)
	if err != nil {
		return Created{}, err
	}
	var k struct {
		Key string `json:"key"`
	}
	if err := json.Unmarshal(js, &k); err != nil {
		return Created{}, badAnswer(err)
	}
	if k.Key == "" {
		return Created{}, &Error{Code: StatusInternal, Message: "the library answered no plaintext key"}
	}
	return Created{Key: k.Key, Record: r}, nil
}

func parseList(js []byte) ([]Record, error) {
	var l struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(js, &l); err != nil {
		return nil, badAnswer(err)
	}
	out := make([]Record, 0, len(l.Keys))
	for _, k := range l.Keys {
		r, err := parseRecord(k)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

func badAnswer(err error) error {
	return &Error{Code: StatusInternal, Message: "unreadable JSON from the library: " + err.Error()}
}

func optMillis(o Opt[time.Time]) Opt[int64] {
	switch o.state {
	case optValue:
		return Some(o.value.UnixMilli())
	case optNull:
		return Null[int64]()
	}
	return Opt[int64]{}
}

func writeOpt[T any](w *objWriter, name string, o Opt[T]) {
	switch o.state {
	case optNull:
		w.raw(name, []byte("null"))
	case optValue:
		w.member(name, o.value)
	}
}

// objWriter builds a JSON object member by member, in a fixed order.
type objWriter struct {
	buf bytes.Buffer
	err error
}

func (w *objWriter) member(name string, v interface{}) {
	if w.err != nil {
		return
	}
	b, err := json.Marshal(v)
	if err != nil {
		w.err = fmt.Errorf("%s: %w", name, err)
		return
	}
	w.raw(name, b)
}

func (w *objWriter) raw(name string, v []byte) {
	if w.buf.Len() == 0 {
		w.buf.WriteByte('{')
	} else {
		w.buf.WriteByte(',')
	}
	k, _ := json.Marshal(name)
	w.buf.Write(k)
	w.buf.WriteByte(':')
	w.buf.Write(v)
}

func (w *objWriter) finish() ([]byte, error) {
	if w.err != nil {
		return nil, w.err
	}
	if w.buf.Len() == 0 {
		return []byte("{}"), nil
	}
	w.buf.WriteByte('}')
	return w.buf.Bytes(), nil
}
