package msauth

import (
	"context"
	"net/http"
	"strconv"
	"time"
)

// DefaultHeader is the request header that carries the API key.
const DefaultHeader = "X-API-Key"

type config struct {
	header   string
	failOpen bool
	clock    func() time.Time
	onError  func(*http.Request, error)
}

// Option configures Middleware.
type Option func(*config)

// WithHeader reads the key from another request header than X-API-Key.
func WithHeader(name string) Option { return func(c *config) { c.header = name } }

// WithFailOpen lets requests through when the library fails (the store is
// unreadable, closed, ...) instead of answering the failure. Decisions about
// keys are enforced either way.
func WithFailOpen() Option { return func(c *config) { c.failOpen = true } }

// WithClock replaces time.Now, for tests.
func WithClock(now func() time.Time) Option { return func(c *config) { c.clock = now } }

// WithErrorHandler is called with every library failure, before the answer
// (or before passing the request on with WithFailOpen), so failures are seen
// in logs: the client is never told ms_last_error(), which may name files.
func WithErrorHandler(f func(*http.Request, error)) Option {
	return func(c *config) { c.onError = f }
}

type ctxKey int

const (
	keyIDKey ctxKey = iota
	planKey
)

// KeyIDFromContext is the id of the key that admitted the request.
func KeyIDFromContext(ctx context.Context) (string, bool) {
	v, ok := ctx.Value(keyIDKey).(string)
	return v, ok
}

// PlanFromContext is the plan label of the key that admitted the request
// ("" when the key has no plan).
func PlanFromContext(ctx context.Context) (string, bool) {
	v, ok := ctx.Value(planKey).(string)
	return v, ok
}

// Middleware checks the API key of every request against store. A rejected
// request gets the documented status and JSON body (Content-Type:
// application/json), Retry-After on 429s and the RateLimit-Policy /
// RateLimit headers; an admitted one reaches next with the key id and plan in
// its context (KeyIDFromContext, PlanFromContext) and the RateLimit headers
// on its response. A library failure fails closed with the library's status
// and JSON body for it (ms_status_http, ms_error_json: 503 for
// store_not_open and store_unavailable, 500 for internal_error and
// invalid_argument), as nginx and the Python middlewares answer, unless
// WithFailOpen is given.
//
// The key header is found by its name compared without case and with "-"
// and "_" alike, the way nginx ($http_*, FastCGI/uwsgi/SCGI params) and
// CGI-style environments (HTTP_X_API_KEY) name headers: X_API_KEY is the key
// header too. A request carrying it more than once, in any spellings, is
// refused as api_key_invalid without a check, so nothing is counted: next,
// or an upstream it forwards to, could read another copy than the one checked.
func Middleware(store *Store, opts ...Option) func(http.Handler) http.Handler {
	c := config{header: DefaultHeader, clock: time.Now}
	for _, o := range opts {
		o(&c)
	}
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			key, copies := keyHeader(r.Header, c.header)
			if copies > 1 {
				writeJSON(w, StatusAPIKeyInvalid.HTTPStatus(), errorBody(StatusAPIKeyInvalid))
				return
			}
			res, err := store.CheckKey(key, c.clock())
			switch {
			case res.OK():
				res.setHeaders(w.Header())
				ctx := context.WithValue(r.Context(), keyIDKey, res.KeyID)
				ctx = context.WithValue(ctx, planKey, res.Plan)
				next.ServeHTTP(w, r.WithContext(ctx))
			case err != nil || res.Status.IsFailure():
				if c.onError != nil {
					c.onError(r, err)
				}
				if c.failOpen {
					next.ServeHTTP(w, r)
					return
				}
				failure := res.Status
				if !failure.IsFailure() {
					failure = StatusInternal
				}
				writeJSON(w, failure.HTTPStatus(), errorBody(failure))
			default:
				res.setHeaders(w.Header())
				writeJSON(w, res.HTTPStatus, errorBody(res.Status))
			}
		})
	}
}

// keyHeader is the value of the key header and how many copies of it h
// holds, under any spelling of its name (see Middleware).
func keyHeader(h http.Header, name string) (value string, copies int) {
	for k, values := range h {
		if sameHeaderName(k, name) && len(values) > 0 {
			value = values[0]
			copies += len(values)
		}
	}
	return value, copies
}

// sameHeaderName compares header names without case and with "-" and "_"
// alike.
func sameHeaderName(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		if foldHeaderByte(a[i]) != foldHeaderByte(b[i]) {
			return false
		}
	}
	return true
}

func foldHeaderByte(c byte) byte {
	switch {
	case 'A' <= c && c <= 'Z':
		return c + ('a' - 'A')
	case c == '_':
		return '-'
	}
	return c
}

func writeJSON(w http.ResponseWriter, status int, body []byte) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body)
}
