package msauth

import (
	"context"
	"encoding/json"
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
// unreadable, closed, ...) instead of answering 503. Decisions about keys
// are enforced either way.
func WithFailOpen() Option { return func(c *config) { c.failOpen = true } }

// WithClock replaces time.Now, for tests.
func WithClock(now func() time.Time) Option { return func(c *config) { c.clock = now } }

// WithErrorHandler is called with every library failure, before the 503 (or
// before passing the request on with WithFailOpen), so failures are seen in
// logs: the client is never told ms_last_error(), which may name files.
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
// on its response. A library failure answers 503 with a JSON body (fail
// closed) unless WithFailOpen is given. A request with more than one key
// header is refused as api_key_invalid without a check.
func Middleware(store *Store, opts ...Option) func(http.Handler) http.Handler {
	c := config{header: DefaultHeader, clock: time.Now}
	for _, o := range opts {
		o(&c)
	}
	name := http.CanonicalHeaderKey(c.header)
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			keys := r.Header[name]
			if len(keys) > 1 {
				// next may read another copy than the one checked: refused
				// unchecked, so nothing is counted.
				writeJSON(w, StatusAPIKeyInvalid.HTTPStatus(), errorBody(StatusAPIKeyInvalid))
				return
			}
			key := ""
			if len(keys) == 1 {
				key = keys[0]
			}
			res := store.Check(key, c.clock())
			switch {
			case res.OK():
				res.setHeaders(w.Header())
				ctx := context.WithValue(r.Context(), keyIDKey, res.KeyID)
				ctx = context.WithValue(ctx, planKey, res.Plan)
				next.ServeHTTP(w, r.WithContext(ctx))
			case res.Status.IsFailure() || res.Err != nil:
				if c.onError != nil {
					c.onError(r, res.Err)
				}
				if c.failOpen {
					next.ServeHTTP(w, r)
					return
				}
				writeJSON(w, http.StatusServiceUnavailable, unavailableBody(res.Status))
			default:
				res.setHeaders(w.Header())
				writeJSON(w, res.HTTPStatus, errorBody(res.Status))
			}
		})
	}
}

func writeJSON(w http.ResponseWriter, status int, body []byte) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// unavailableBody is the 503 answer to a library failure, in the shape of the
// documented bodies: the failure's code string and message from the library,
// and httpStatus 503 so body and status line agree. For store_not_open and
// store_unavailable (503s already) it is exactly ms_error_json's body. The
// detail (ms_last_error) is not sent: it can name files.
func unavailableBody(s Status) []byte {
	if b, ok := unavailableBodies[s]; ok {
		return b
	}
	return unavailableBodies[StatusInternal]
}

var unavailableBodies = func() map[Status][]byte {
	m := make(map[Status][]byte)
	for _, s := range knownStatuses {
		if s.IsFailure() {
			m[s] = buildBody(s.String(), s.Message(), http.StatusServiceUnavailable)
		}
	}
	return m
}()

func buildBody(code, message string, status int) []byte {
	type errorObj struct {
		Code       string `json:"code"`
		Message    string `json:"message"`
		HTTPStatus int    `json:"httpStatus"`
	}
	b, _ := json.Marshal(struct {
		Success bool     `json:"success"`
		Error   errorObj `json:"error"`
	}{false, errorObj{code, message, status}})
	return b
}
