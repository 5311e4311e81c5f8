package msauth

import (
	"errors"
	"strconv"
	"strings"
)

// Status is a decision (0..99) or a library failure (100 and up), with the
// numeric values of the C ABI v1.
type Status int32

// Decisions about a key.
const (
	StatusOK                  Status = 0
	StatusAPIKeyMissing       Status = 1
	StatusAPIKeyInvalid       Status = 2
	StatusAPIKeyExpired       Status = 3
	StatusAPIKeyRevoked       Status = 4
	StatusAPIKeyQuotaExceeded Status = 5
	StatusRateLimitExceeded   Status = 6
)

// Failures of the library: never a decision about the key.
const (
	StatusInvalidArgument Status = 100
	StatusNotOpen         Status = 101
	StatusStore           Status = 102
	StatusNotFound        Status = 103
	StatusInternal        Status = 104
)

// The statuses the ABI v1 defines; their descriptions are read once from the
// library so this package and the C library can never disagree.
var knownStatuses = [...]Status{
	StatusOK, StatusAPIKeyMissing, StatusAPIKeyInvalid, StatusAPIKeyExpired,
	StatusAPIKeyRevoked, StatusAPIKeyQuotaExceeded, StatusRateLimitExceeded,
	StatusInvalidArgument, StatusNotOpen, StatusStore, StatusNotFound, StatusInternal,
}

type statusInfo struct {
	code, message string
	http          int
	body          []byte // ms_error_json, the documented body
}

var statusTable = func() map[Status]*statusInfo {
	m := make(map[Status]*statusInfo, len(knownStatuses))
	for _, s := range knownStatuses {
		m[s] = &statusInfo{
			code:    cStatusCode(s),
			message: cStatusMessage(s),
			http:    cStatusHTTP(s),
			body:    cErrorJSON(s),
		}
	}
	return m
}()

// String is the code string: "ok", "api_key_missing", ... ("unknown" for
// values the ABI does not define).
func (s Status) String() string {
	if i, ok := statusTable[s]; ok {
		return i.code
	}
	return cStatusCode(s)
}

// Message is the documented message, e.g. "API key is missing.".
func (s Status) Message() string {
	if i, ok := statusTable[s]; ok {
		return i.message
	}
	return cStatusMessage(s)
}

// HTTPStatus is the HTTP status the ABI assigns: 200, 401, 429, 404, 500, 503.
func (s Status) HTTPStatus() int {
	if i, ok := statusTable[s]; ok {
		return i.http
	}
	return cStatusHTTP(s)
}

// IsFailure reports a library failure (100 and up) rather than a decision.
func (s Status) IsFailure() bool { return s >= 100 }

// ErrorBody is the documented JSON body for s, exactly as ms_error_json
// writes it, e.g.
// {"success":false,"error":{"code":"api_key_missing","message":"API key is missing.","httpStatus":401}}
// The caller owns the returned slice.
func ErrorBody(s Status) []byte {
	return append([]byte(nil), errorBody(s)...)
}

// errorBody is ErrorBody without the copy, for callers in this package that
// only write it.
func errorBody(s Status) []byte {
	if i, ok := statusTable[s]; ok {
		return i.body
	}
	return cErrorJSON(s)
}

// Error is a failure of the library, carrying ms_last_error().
type Error struct {
	Code    Status
	Message string
}

func (e *Error) Error() string {
	code := e.Code.String()
	switch {
	case e.Message == "":
		return "ms-auth: " + code
	case strings.HasPrefix(e.Message, code+": "):
		return "ms-auth: " + e.Message // ms_last_error() already starts with the code
	}
	return "ms-auth: " + code + ": " + e.Message
}

// Is makes every *Error match the sentinel of its code:
// errors.Is(err, ErrNotFound) whatever the message.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code && (t.Message == "" || t.Message == e.Message)
}

// Sentinels for errors.Is.
var (
	ErrInvalidArgument error = &Error{Code: StatusInvalidArgument}
	ErrNotOpen         error = &Error{Code: StatusNotOpen}
	ErrStore           error = &Error{Code: StatusStore}
	ErrNotFound        error = &Error{Code: StatusNotFound}
	ErrInternal        error = &Error{Code: StatusInternal}
)

// StatusOf is the status carried by err: the Code of an *Error in its chain,
// StatusInternal for any other non-nil error, StatusOK for nil.
func StatusOf(err error) Status {
	if err == nil {
		return StatusOK
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return StatusInternal
}

// InterruptedError is the error of a call whose context ended while the
// library was at work on it. A library call cannot be interrupted: it runs on
// to its end in the background (Close waits for it) and its answer is
// dropped, so a change it makes may or may not have taken effect; read it
// back to know. errors.Is(err, context.Canceled) or
// errors.Is(err, context.DeadlineExceeded) tells which way the context ended.
// A context that had ended before the call is that context's error, and then
// nothing was done.
type InterruptedError struct {
	Err error // the context's error
}

func (e *InterruptedError) Error() string {
	return "ms-auth: stopped waiting for the library (the call may still take effect): " + e.Err.Error()
}

func (e *InterruptedError) Unwrap() error { return e.Err }

func invalidArgument(what string, err error) error {
	msg := what
	if err != nil {
		msg += ": " + err.Error()
	}
	return &Error{Code: StatusInvalidArgument, Message: msg}
}

// Version is the library's version, "MAJOR.MINOR.PATCH".
func Version() string { return cVersion() }

// ABIVersion is the C ABI version the linked library implements.
func ABIVersion() int { return cABIVersion() }

// abiVersion is the ABI this package was written against.
const abiVersion = 1

func checkABI() error {
	if v := cABIVersion(); v != abiVersion {
		return &Error{Code: StatusInternal, Message: "libms_auth implements C ABI " + strconv.Itoa(v) +
			", this package needs " + strconv.Itoa(abiVersion)}
	}
	return nil
}
