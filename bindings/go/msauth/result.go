package msauth

import (
	"bytes"
	"net/http"
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
	//
	// Deprecated: CheckKey returns the failure as its error; Err is kept for
	// the deprecated Check.
	Err error

	fields answerFields // the answer's fields from ms_store_check_http, parsed on demand
}

// OK reports an admitted request.
func (r Result) OK() bool { return r.Status == StatusOK && r.Err == nil }

// ErrorBody is the documented JSON body for the result's status.
func (r Result) ErrorBody() []byte { return ErrorBody(r.Status) }

// Headers are the response headers for this result, as the library builds
// them for every host (ms_store_check_http): Retry-After (whole seconds,
// rounded up) on 429s, and the IETF draft (draft-ietf-httpapi-ratelimit-headers)
// RateLimit-Policy and RateLimit fields for the key's quota ("quota") and rate
// limit ("rate") when it has them, on admitted and 429 answers, with the
// draft's w: the window in seconds (86400 for a daily quota, the month's
// length for a monthly one).
func (r Result) Headers() http.Header {
	h := make(http.Header, 3)
	r.setHeaders(h)
	return h
}

// setHeaders is a method on *Result: a Result carries its fields' bytes, and
// the middleware's hot path should not copy them to read them.
func (r *Result) setHeaders(h http.Header) {
	rest := r.fields.b[:r.fields.n]
	for len(rest) > 0 {
		line, tail, _ := bytes.Cut(rest, crlf)
		rest = tail
		if name, value, ok := bytes.Cut(line, colonSpace); ok {
			// Under the key h.Set would use (Go's canonical form), without
			// Set's canonicalising copy of each name: one string a value.
			h[headerName(name)] = []string{string(value)}
		}
	}
}

var crlf, colonSpace = []byte("\r\n"), []byte(": ")

// headerName answers the library's field names as constant strings (no
// allocation for them), any other as a canonical copy.
func headerName(name []byte) string {
	switch string(name) { // compiled to comparisons, no conversion
	case "Retry-After":
		return "Retry-After"
	case "RateLimit-Policy":
		return "Ratelimit-Policy"
	case "RateLimit":
		return "Ratelimit"
	}
	return http.CanonicalHeaderKey(string(name))
}
