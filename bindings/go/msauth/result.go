package msauth

import (
	"net/http"
	"strconv"
	"time"
)

// Result is the answer to one Check: the fields of ms_check_result.
type Result struct {
	Status     Status
	HTTPStatus int
	// RetryAfter is > 0 only for 429s: the time to the quota period's end,
	// or until the rate limit admits one request.
	RetryAfter time.Duration

	QuotaLimit     int64 // -1: no quota
	QuotaRemaining int64 // after this request; -1: no quota
	QuotaReset     int64 // Unix ms at which the current quota period ends; 0: no quota
	RateLimit      int64 // requests per window; -1: no rate limit
	RateRemaining  int64 // requests admitted right now, after this one; -1: no rate limit
	RateReset      int64 // Unix ms at which the rate bucket is full again; 0: no rate limit

	KeyID string // the matched key's id; "" when none matched
	Plan  string // the matched key's plan; "" when none

	// Err is the library failure (an *Error with ms_last_error()) when
	// Status is 100 or more, else nil.
	Err error

	nowMS int64 // the time of the check, for the relative header values
}

// OK reports an admitted request.
func (r Result) OK() bool { return r.Status == StatusOK && r.Err == nil }

// ErrorBody is the documented JSON body for the result's status.
func (r Result) ErrorBody() []byte { return ErrorBody(r.Status) }

// Headers are the response headers for this result: Retry-After (whole
// seconds, rounded up) on 429s, and the IETF draft
// (draft-ietf-httpapi-ratelimit-headers) RateLimit-Policy and RateLimit
// fields for the key's quota ("quota") and rate limit ("rate") when it has
// them, on admitted and 429 answers. The draft's optional w (window) is left
// out: ms_check_result does not carry the window.
func (r Result) Headers() http.Header {
	h := make(http.Header, 3)
	r.setHeaders(h)
	return h
}

func (r Result) setHeaders(h http.Header) {
	if r.HTTPStatus == http.StatusTooManyRequests && r.RetryAfter > 0 {
		h.Set("Retry-After", strconv.FormatInt(ceilSeconds(r.RetryAfter.Milliseconds()), 10))
	}
	switch r.Status {
	case StatusOK, StatusAPIKeyQuotaExceeded, StatusRateLimitExceeded:
	default:
		return // no usable key: there is no policy to describe
	}
	var policy, state []byte
	if r.QuotaLimit >= 0 {
		policy = appendItem(policy, "quota", 'q', r.QuotaLimit)
		state = appendItem(state, "quota", 'r', max0(r.QuotaRemaining))
		state = appendParam(state, 't', ceilSeconds(r.QuotaReset-r.nowMS))
	}
	if r.RateLimit >= 0 {
		policy = appendItem(policy, "rate", 'q', r.RateLimit)
		state = appendItem(state, "rate", 'r', max0(r.RateRemaining))
		state = appendParam(state, 't', ceilSeconds(r.RateReset-r.nowMS))
	}
	if policy != nil {
		h.Set("RateLimit-Policy", string(policy))
		h.Set("RateLimit", string(state))
	}
}

// appendItem appends a structured-field list member `"name";k=v`.
func appendItem(b []byte, name string, k byte, v int64) []byte {
	if len(b) > 0 {
		b = append(b, ", "...)
	}
	b = append(b, '"')
	b = append(b, name...)
	b = append(b, '"')
	return appendParam(b, k, v)
}

func appendParam(b []byte, k byte, v int64) []byte {
	b = append(b, ';', k, '=')
	return strconv.AppendInt(b, v, 10)
}

// ceilSeconds rounds milliseconds up to whole seconds, never below 0:
// a client waiting the advertised time must not come back early.
func ceilSeconds(ms int64) int64 {
	if ms <= 0 {
		return 0
	}
	return (ms + 999) / 1000
}

func max0(v int64) int64 {
	if v < 0 {
		return 0
	}
	return v
}
