package msauth

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// appHandler is the protected application: it echoes what the middleware
// put in the request context.
var appHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	id, idOK := KeyIDFromContext(r.Context())
	plan, planOK := PlanFromContext(r.Context())
	w.Header().Set("Content-Type", "text/plain")
	_, _ = io.WriteString(w, "app key="+id+" plan="+plan+" idOK="+strconv.FormatBool(idOK)+" planOK="+strconv.FormatBool(planOK))
})

type answer struct {
	status  int
	body    string
	headers map[string]string // "" means: must be absent
}

// get sends a real HTTP request through the loopback server and compares
// status, body bytes and the named headers exactly.
func get(t *testing.T, url, header, key string, want answer) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if key != "" || header != "" {
		req.Header.Set(header, key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != want.status {
		t.Errorf("key %q: status %d, want %d", key, resp.StatusCode, want.status)
	}
	if string(body) != want.body {
		t.Errorf("key %q: body\n got %s\nwant %s", key, body, want.body)
	}
	for name, v := range want.headers {
		got, present := resp.Header[http.CanonicalHeaderKey(name)]
		switch {
		case v == "" && present:
			t.Errorf("key %q: header %s = %q, want none", key, name, got)
		case v != "" && (len(got) != 1 || got[0] != v):
			t.Errorf("key %q: header %s = %q, want %q", key, name, got, v)
		}
	}
}

var noRateHeaders = map[string]string{"Retry-After": "", "RateLimit-Policy": "", "RateLimit": ""}

func jsonAnswer(status int, body string, extra map[string]string) answer {
	h := map[string]string{"Content-Type": "application/json", "Content-Length": strconv.Itoa(len(body))}
	for k, v := range noRateHeaders {
		h[k] = v
	}
	for k, v := range extra {
		h[k] = v
	}
	return answer{status, body, h}
}

// Every documented answer, over HTTP.
func TestMiddlewareDocumentedAnswers(t *testing.T) {
	s := openTemp(t)
	clock := t0
	srv := httptest.NewServer(Middleware(s, WithClock(func() time.Time { return clock }))(appHandler))
	defer srv.Close()

	ok := mustCreate(t, s, KeySpec{Plan: "pro", Quota: &Quota{Limit: 10, Period: Daily},
		RateLimit: Some(RateLimit{Limit: 5, Per: time.Minute})}, t0)
	exp := mustCreate(t, s, KeySpec{ExpiresAt: Some(t0)}, t0.Add(-time.Hour))
	rev := mustCreate(t, s, KeySpec{}, t0.Add(-time.Hour))
	if err := s.RevokeKeyAt(rev.Record.ID, t0.Add(-time.Minute)); err != nil {
		t.Fatal(err)
	}
	quota := mustCreate(t, s, KeySpec{Quota: &Quota{Limit: 1, Period: Daily}, RateLimit: Null[RateLimit]()}, t0)
	rate := mustCreate(t, s, KeySpec{RateLimit: Some(RateLimit{Limit: 1, Per: 10 * time.Second})}, t0)
	noPlan := mustCreate(t, s, KeySpec{RateLimit: Null[RateLimit]()}, t0)

	// ok: reaches the app with key id and plan; RateLimit headers advertised.
	get(t, srv.URL, "X-API-Key", ok.Key, answer{200, "app key=" + ok.Record.ID + " plan=pro idOK=true planOK=true",
		map[string]string{
			"Content-Type":     "text/plain",
			"Retry-After":      "",
			"RateLimit-Policy": `"quota";q=10;w=86400, "rate";q=5;w=60`,
			"RateLimit":        `"quota";r=9;t=43200, "rate";r=4;t=12`,
		}})
	get(t, srv.URL, "X-API-Key", noPlan.Key, answer{200, "app key=" + noPlan.Record.ID + " plan= idOK=true planOK=true", noRateHeaders})

	// missing: no header at all, and an empty / blank one.
	missing := jsonAnswer(401, documentedBodies[StatusAPIKeyMissing], nil)
	get(t, srv.URL, "", "", missing)
	get(t, srv.URL, "X-API-Key", " ", missing)

	// invalid
	get(t, srv.URL, "X-API-Key", "ms_live_1a2b3c4d5e6f7g8h9i0j", jsonAnswer(401, documentedBodies[StatusAPIKeyInvalid], nil))

	// expired
	get(t, srv.URL, "X-API-Key", exp.Key, jsonAnswer(401, documentedBodies[StatusAPIKeyExpired], nil))

	// revoked
	get(t, srv.URL, "X-API-Key", rev.Key, jsonAnswer(401, documentedBodies[StatusAPIKeyRevoked], nil))

	// quota exceeded: Retry-After until midnight UTC.
	get(t, srv.URL, "X-API-Key", quota.Key, answer{200, "app key=" + quota.Record.ID + " plan= idOK=true planOK=true", nil})
	get(t, srv.URL, "X-API-Key", quota.Key, jsonAnswer(429, documentedBodies[StatusAPIKeyQuotaExceeded], map[string]string{
		"Retry-After":      "43200",
		"RateLimit-Policy": `"quota";q=1;w=86400`,
		"RateLimit":        `"quota";r=0;t=43200`,
	}))

	// rate limited: Retry-After until one request is admitted.
	get(t, srv.URL, "X-API-Key", rate.Key, answer{200, "app key=" + rate.Record.ID + " plan= idOK=true planOK=true", nil})
	clock = t0.Add(2500 * time.Millisecond) // 7.5 s left: rounded up to 8
	get(t, srv.URL, "X-API-Key", rate.Key, jsonAnswer(429, documentedBodies[StatusRateLimitExceeded], map[string]string{
		"Retry-After":      "8",
		"RateLimit-Policy": `"rate";q=1;w=10`,
		"RateLimit":        `"rate";r=0;t=8`,
	}))
	clock = t0.Add(10 * time.Second)
	get(t, srv.URL, "X-API-Key", rate.Key, answer{200, "app key=" + rate.Record.ID + " plan= idOK=true planOK=true", nil})
}

func TestMiddlewareWithHeader(t *testing.T) {
	s := openTemp(t)
	k := mustCreate(t, s, KeySpec{Plan: "team"}, t0)
	srv := httptest.NewServer(Middleware(s, WithHeader("X-Custom-Key"), WithClock(func() time.Time { return t0 }))(appHandler))
	defer srv.Close()
	get(t, srv.URL, "X-Custom-Key", k.Key, answer{200, "app key=" + k.Record.ID + " plan=team idOK=true planOK=true", nil})
	// The default header is no longer read.
	get(t, srv.URL, "X-API-Key", k.Key, jsonAnswer(401, documentedBodies[StatusAPIKeyMissing], nil))
}

// A library failure fails closed with the library's status and body for it
// (ms_status_http, ms_error_json), as nginx and the Python middlewares answer;
// WithFailOpen lets the request through without a key in its context.
func TestMiddlewareLibraryFailure(t *testing.T) {
	s, err := Open(t.TempDir() + "/keys.db")
	if err != nil {
		t.Fatal(err)
	}
	k := mustCreate(t, s, KeySpec{}, t0)
	var seen int64
	onErr := WithErrorHandler(func(r *http.Request, err error) {
		if errors.Is(err, ErrNotOpen) || errors.Is(err, ErrInvalidArgument) {
			atomic.AddInt64(&seen, 1)
		}
	})
	closed := httptest.NewServer(Middleware(s, onErr)(appHandler))
	defer closed.Close()
	open := httptest.NewServer(Middleware(s, onErr, WithFailOpen())(appHandler))
	defer open.Close()
	badClock := httptest.NewServer(Middleware(s, onErr, WithClock(func() time.Time { return time.Unix(1, 0) }))(appHandler))
	defer badClock.Close()

	// A clock in seconds is an invalid argument: still a failure, not a decision.
	get(t, badClock.URL, "X-API-Key", k.Key, jsonAnswer(500,
		`{"success":false,"error":{"code":"invalid_argument","message":"Invalid argument.","httpStatus":500}}`, nil))

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// A closed store is store_not_open: the library's own 503 body.
	body := `{"success":false,"error":{"code":"store_not_open","message":"Authentication store is not open.","httpStatus":503}}`
	if string(ErrorBody(StatusNotOpen)) != body {
		t.Errorf("ms_error_json(MS_ERR_NOT_OPEN) = %s", ErrorBody(StatusNotOpen))
	}
	get(t, closed.URL, "X-API-Key", k.Key, jsonAnswer(503, body, nil))
	get(t, open.URL, "X-API-Key", k.Key, answer{200, "app key= plan= idOK=false planOK=false", nil})
	if atomic.LoadInt64(&seen) != 3 {
		t.Errorf("error handler saw %d failures, want 3", seen)
	}
}

// rawGet sends one GET with the header lines exactly as given (names keep
// their case on the wire) and answers status and body.
func rawGet(t *testing.T, srv *httptest.Server, lines ...string) (int, string) {
	t.Helper()
	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	req := "GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n" + strings.Join(lines, "\r\n") + "\r\n\r\n"
	if _, err := io.WriteString(conn, req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

// Several key headers: the upstream could read another copy than the one
// checked, so the request is refused as api_key_invalid, and unchecked: no
// quota is charged, whatever the copies hold.
func TestMiddlewareRepeatedKeyHeader(t *testing.T) {
	s := openTemp(t)
	srv := httptest.NewServer(Middleware(s, WithClock(func() time.Time { return t0 }))(appHandler))
	defer srv.Close()
	k := mustCreate(t, s, KeySpec{Quota: &Quota{Limit: 5, Period: Daily}, RateLimit: Null[RateLimit]()}, t0)
	other := mustCreate(t, s, KeySpec{RateLimit: Null[RateLimit]()}, t0)
	invalid := jsonAnswer(401, documentedBodies[StatusAPIKeyInvalid], nil)

	for _, pair := range [][2]string{{k.Key, k.Key}, {k.Key, other.Key}, {other.Key, k.Key}, {k.Key, ""}} {
		req, err := http.NewRequest(http.MethodGet, srv.URL, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Add("X-API-Key", pair[0])
		req.Header.Add("X-API-Key", pair[1])
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != invalid.status || string(body) != invalid.body {
			t.Errorf("two headers %q: %d %s, want %d %s", pair, resp.StatusCode, body, invalid.status, invalid.body)
		}
		for name, v := range invalid.headers {
			if got := resp.Header.Get(name); got != v {
				t.Errorf("two headers %q: header %s = %q, want %q", pair, name, got, v)
			}
		}
	}
	// Names differing in case are the same header.
	if code, body := rawGet(t, srv, "x-api-key: "+k.Key, "X-API-KEY: "+k.Key); code != 401 || body != invalid.body {
		t.Errorf("x-api-key + X-API-KEY: %d %s", code, body)
	}
	// "-" and "_" alike, as nginx's $http_* and CGI-style params (HTTP_X_API_KEY)
	// name headers: an underscore spelling beside another copy is a repeat,
	// whichever comes first.
	for _, lines := range [][]string{
		{"X-API-Key: " + k.Key, "X_API_KEY: " + other.Key},
		{"X_API_KEY: " + other.Key, "X-API-Key: " + k.Key},
		{"x_api_key: " + k.Key, "X-Api_Key: " + k.Key},
	} {
		if code, body := rawGet(t, srv, lines...); code != 401 || body != invalid.body {
			t.Errorf("%q: %d %s", lines, code, body)
		}
	}
	// One copy is decided as usual, and the quota is untouched.
	get(t, srv.URL, "X-API-Key", k.Key, answer{200, "app key=" + k.Record.ID + " plan= idOK=true planOK=true",
		map[string]string{"RateLimit": `"quota";r=4;t=43200`}})
	// A single copy spelled with underscores is the key header.
	if code, body := rawGet(t, srv, "X_API_KEY: "+k.Key); code != 200 || body != "app key="+k.Record.ID+" plan= idOK=true planOK=true" {
		t.Errorf("X_API_KEY alone: %d %s", code, body)
	}
	for id, want := range map[string]int64{k.Record.ID: 2, other.Record.ID: 0} {
		if rec, err := s.GetKey(id); err != nil || rec.Usage.Total != want {
			t.Errorf("key %s: usage %+v (%v), want %d admitted", id, rec.Usage, err, want)
		}
	}

	// The configured header name follows the same rule.
	custom := httptest.NewServer(Middleware(s, WithHeader("X-Custom-Key"), WithClock(func() time.Time { return t0 }))(appHandler))
	defer custom.Close()
	if code, body := rawGet(t, custom, "X-Custom-Key: "+other.Key, "x-custom-key: "+other.Key); code != 401 || body != invalid.body {
		t.Errorf("two X-Custom-Key: %d %s", code, body)
	}
	if code, body := rawGet(t, custom, "X-Custom-Key: "+other.Key, "X_Custom_Key: "+other.Key); code != 401 || body != invalid.body {
		t.Errorf("X-Custom-Key and X_Custom_Key: %d %s", code, body)
	}
	if code, _ := rawGet(t, custom, "X-Custom-Key: "+other.Key, "X-API-Key: "+k.Key); code != 200 {
		t.Errorf("one X-Custom-Key and one X-API-Key: %d, want 200", code)
	}

	// No check at all: a closed store with WithFailOpen would let a checked
	// request through, a repeated header is refused before.
	closed, err := Open(t.TempDir() + "/keys.db")
	if err != nil {
		t.Fatal(err)
	}
	_ = closed.Close()
	var failures int64
	open := httptest.NewServer(Middleware(closed, WithFailOpen(), WithErrorHandler(func(*http.Request, error) {
		atomic.AddInt64(&failures, 1)
	}))(appHandler))
	defer open.Close()
	if code, body := rawGet(t, open, "X-API-Key: "+k.Key, "X-API-Key: "+k.Key); code != 401 || body != invalid.body {
		t.Errorf("repeated header, fail-open closed store: %d %s", code, body)
	}
	if n := atomic.LoadInt64(&failures); n != 0 {
		t.Errorf("the store was called %d times for a repeated header", n)
	}
}

func TestContextAccessorsWithoutMiddleware(t *testing.T) {
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	if id, ok := KeyIDFromContext(r.Context()); ok || id != "" {
		t.Error("KeyIDFromContext on a bare context")
	}
	if plan, ok := PlanFromContext(r.Context()); ok || plan != "" {
		t.Error("PlanFromContext on a bare context")
	}
}
