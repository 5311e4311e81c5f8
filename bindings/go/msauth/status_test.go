package msauth

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// The table of the C ABI v1 contract, written out here so a drift in the
// library or in this package fails a test.
var abiTable = []struct {
	s       Status
	code    string
	message string
	http    int
}{
	{StatusOK, "ok", "OK.", 200},
	{StatusAPIKeyMissing, "api_key_missing", "API key is missing.", 401},
	{StatusAPIKeyInvalid, "api_key_invalid", "API key is invalid.", 401},
	{StatusAPIKeyExpired, "api_key_expired", "API key has expired.", 401},
	{StatusAPIKeyRevoked, "api_key_revoked", "API key has been revoked.", 401},
	{StatusAPIKeyQuotaExceeded, "api_key_quota_exceeded", "API key quota has been exceeded.", 429},
	{StatusRateLimitExceeded, "rate_limit_exceeded", "Too many requests. Please try again later.", 429},
	{StatusInvalidArgument, "invalid_argument", "", 500},
	{StatusNotOpen, "store_not_open", "", 503},
	{StatusStore, "store_unavailable", "", 503},
	{StatusNotFound, "not_found", "", 404},
	{StatusInternal, "internal_error", "", 500},
}

// The documented bodies of authentication.txt, byte for byte (compact).
var documentedBodies = map[Status]string{
	StatusAPIKeyMissing:       `{"success":false,"error":{"code":"api_key_missing","message":"API key is missing.","httpStatus":401}}`,
	StatusAPIKeyInvalid:       `{"success":false,"error":{"code":"api_key_invalid","message":"API key is invalid.","httpStatus":401}}`,
	StatusAPIKeyExpired:       `{"success":false,"error":{"code":"api_key_expired","message":"API key has expired.","httpStatus":401}}`,
	StatusAPIKeyRevoked:       `{"success":false,"error":{"code":"api_key_revoked","message":"API key has been revoked.","httpStatus":401}}`,
	StatusAPIKeyQuotaExceeded: `{"success":false,"error":{"code":"api_key_quota_exceeded","message":"API key quota has been exceeded.","httpStatus":429}}`,
	StatusRateLimitExceeded:   `{"success":false,"error":{"code":"rate_limit_exceeded","message":"Too many requests. Please try again later.","httpStatus":429}}`,
}

func TestStatusTableMatchesABI(t *testing.T) {
	for _, c := range abiTable {
		if got := c.s.String(); got != c.code {
			t.Errorf("Status(%d).String() = %q, want %q", c.s, got, c.code)
		}
		if got := c.s.HTTPStatus(); got != c.http {
			t.Errorf("Status(%d).HTTPStatus() = %d, want %d", c.s, got, c.http)
		}
		// The uncached C calls agree with the cached table.
		if got := cStatusHTTP(c.s); got != c.http {
			t.Errorf("ms_status_http(%d) = %d, want %d", c.s, got, c.http)
		}
		if c.message != "" && c.s.Message() != c.message {
			t.Errorf("Status(%d).Message() = %q, want %q", c.s, c.s.Message(), c.message)
		}
		if got, want := c.s.IsFailure(), c.s >= 100; got != want {
			t.Errorf("Status(%d).IsFailure() = %v", c.s, got)
		}
	}
	if got := Status(42).String(); got != "unknown" {
		t.Errorf("Status(42).String() = %q, want unknown", got)
	}
	if got := fmt.Sprint(StatusAPIKeyRevoked); got != "api_key_revoked" {
		t.Errorf("fmt.Sprint = %q", got)
	}
}

func TestErrorBodyIsDocumented(t *testing.T) {
	for s, want := range documentedBodies {
		if got := string(ErrorBody(s)); got != want {
			t.Errorf("ErrorBody(%v)\n got %s\nwant %s", s, got, want)
		}
	}
	// The caller owns the slice: changing it must not change the next answer.
	b := ErrorBody(StatusAPIKeyMissing)
	b[0] = 'X'
	if string(ErrorBody(StatusAPIKeyMissing)) != documentedBodies[StatusAPIKeyMissing] {
		t.Error("ErrorBody returned shared storage")
	}
}

func TestVersion(t *testing.T) {
	if ABIVersion() != 1 {
		t.Fatalf("ABIVersion() = %d, want 1", ABIVersion())
	}
	v := Version()
	if !strings.HasPrefix(v, "1.") || strings.Count(v, ".") != 2 {
		t.Fatalf("Version() = %q, want 1.x.y", v)
	}
}

func TestErrorSentinels(t *testing.T) {
	err := error(&Error{Code: StatusNotFound, Message: "no key with id abc"})
	if !errors.Is(err, ErrNotFound) {
		t.Error("errors.Is(NotFound error, ErrNotFound) = false")
	}
	for _, other := range []error{ErrInvalidArgument, ErrNotOpen, ErrStore, ErrInternal} {
		if errors.Is(err, other) {
			t.Errorf("errors.Is(NotFound error, %v) = true", other)
		}
	}
	wrapped := fmt.Errorf("admin: %w", err)
	if !errors.Is(wrapped, ErrNotFound) || StatusOf(wrapped) != StatusNotFound {
		t.Error("a wrapped *Error lost its code")
	}
	if got := err.Error(); got != "ms-auth: not_found: no key with id abc" {
		t.Errorf("Error() = %q", got)
	}
	if StatusOf(nil) != StatusOK || StatusOf(errors.New("x")) != StatusInternal {
		t.Error("StatusOf of nil / foreign error")
	}
}
