package msauth

/*
#include <stdlib.h>
#include <string.h>
#include "ms_auth.h"

// ms_last_error() is thread-local. A goroutine can move to another OS thread
// between two cgo calls, so reading it in a second call could see another
// thread's error. These shims read it inside the same C call, on the same
// thread, and hand back a malloc'd copy (NULL when the call succeeded).
// That is also one cgo crossing instead of two (or a LockOSThread pair).
static char *msgo_take_error(int32_t status) {
	if (status < 100) return NULL;
	const char *e = ms_last_error();
	return strdup(e != NULL ? e : "");
}

typedef struct {
	int32_t status;
	char *err;
} msgo_ret;

typedef struct {
	ms_check_result r;
	char *err;
	size_t fields_len;
	char fields[MS_HTTP_FIELDS_MAX];
} msgo_check_ret;

// Returned by value: the result then lives in a Go stack variable instead of
// a heap allocation that a Go pointer passed to C would force. The answer's
// Retry-After / RateLimit fields come from the library, as for every host.
static msgo_check_ret msgo_check(ms_store *s, const char *key, size_t key_len, int64_t now_ms) {
	msgo_check_ret o;
	o.fields_len = 0;
	o.fields[0] = 0;
	memset(&o.r, 0, sizeof o.r);
	int32_t st = ms_store_check_http(s, key, key_len, now_ms, &o.r, o.fields, sizeof o.fields, &o.fields_len);
	o.r.status = st; // the return value is authoritative, also if out was not filled
	if (o.fields_len >= sizeof o.fields) o.fields_len = 0; // cannot happen: MS_HTTP_FIELDS_MAX suffices
	o.err = msgo_take_error(st);
	return o;
}

// n checks in one cgo call (ms_store_check, without the answer's fields): the library's own cost, for the benchmark to
// tell it apart from the binding's. Answers the first non-OK status, or 0.
static int32_t msgo_check_loop(ms_store *s, const char *key, size_t key_len, int64_t now_ms, int64_t n) {
	ms_check_result r;
	for (int64_t i = 0; i < n; i++) {
		int32_t st = ms_store_check(s, key, key_len, now_ms, &r);
		if (st != 0) return st;
	}
	return 0;
}

static msgo_ret msgo_store_open(const char *path, ms_store **out) {
	msgo_ret o;
	o.status = ms_store_open(path, out);
	o.err = msgo_take_error(o.status);
	return o;
}

static msgo_ret msgo_key_create(ms_store *s, const char *spec, int64_t now_ms, char **out) {
	msgo_ret o;
	o.status = ms_key_create(s, spec, now_ms, out);
	o.err = msgo_take_error(o.status);
	return o;
}

static msgo_ret msgo_key_revoke(ms_store *s, const char *id, const char *reason, int64_t now_ms) {
	msgo_ret o;
	o.status = ms_key_revoke_v2(s, id, reason, now_ms);
	o.err = msgo_take_error(o.status);
	return o;
}

static msgo_ret msgo_key_update(ms_store *s, const char *id, const char *patch, char **out) {
	msgo_ret o;
	o.status = ms_key_update(s, id, patch, out);
	o.err = msgo_take_error(o.status);
	return o;
}

static msgo_ret msgo_key_get(ms_store *s, const char *id, char **out) {
	msgo_ret o;
	o.status = ms_key_get(s, id, out);
	o.err = msgo_take_error(o.status);
	return o;
}

static msgo_ret msgo_key_list(ms_store *s, const char *filter, char **out) {
	msgo_ret o;
	o.status = ms_key_list(s, filter, out);
	o.err = msgo_take_error(o.status);
	return o;
}

// Key lifecycle and monitoring (added to the ABI after v1).

static msgo_ret msgo_store_open_v2(const char *path, const char *options, ms_store **out) {
	msgo_ret o;
	o.status = ms_store_open_v2(path, options, out);
	o.err = msgo_take_error(o.status);
	return o;
}

static msgo_ret msgo_set_actor(ms_store *s, const char *actor) {
	msgo_ret o;
	o.status = ms_store_set_actor(s, actor);
	o.err = msgo_take_error(o.status);
	return o;
}

static msgo_ret msgo_key_rotate(ms_store *s, const char *id, const char *opts, int64_t now_ms, char **out) {
	msgo_ret o;
	o.status = ms_key_rotate(s, id, opts, now_ms, out);
	o.err = msgo_take_error(o.status);
	return o;
}

static msgo_ret msgo_plan_put(ms_store *s, const char *plan, int64_t now_ms, char **out) {
	msgo_ret o;
	o.status = ms_plan_put(s, plan, now_ms, out);
	o.err = msgo_take_error(o.status);
	return o;
}

static msgo_ret msgo_plan_list(ms_store *s, char **out) {
	msgo_ret o;
	o.status = ms_plan_list(s, out);
	o.err = msgo_take_error(o.status);
	return o;
}

static msgo_ret msgo_policy_put(ms_store *s, const char *policy, int64_t now_ms, char **out) {
	msgo_ret o;
	o.status = ms_policy_put(s, policy, now_ms, out);
	o.err = msgo_take_error(o.status);
	return o;
}

static msgo_ret msgo_policy_get(ms_store *s, char **out) {
	msgo_ret o;
	o.status = ms_policy_get(s, out);
	o.err = msgo_take_error(o.status);
	return o;
}

static msgo_ret msgo_audit(ms_store *s, const char *filter, char **out) {
	msgo_ret o;
	o.status = ms_audit(s, filter, out);
	o.err = msgo_take_error(o.status);
	return o;
}

static msgo_ret msgo_usage(ms_store *s, const char *id, int64_t from_ms, int64_t to_ms, char **out) {
	msgo_ret o;
	o.status = ms_usage(s, id, from_ms, to_ms, out);
	o.err = msgo_take_error(o.status);
	return o;
}

static msgo_ret msgo_metrics_text(ms_store *s, char **out) {
	msgo_ret o;
	o.status = ms_metrics_text(s, out);
	o.err = msgo_take_error(o.status);
	return o;
}
*/
import "C"

import (
	"bytes"
	"strings"
	"time"
	"unsafe"
)

// takeError turns a shim's error copy into an *Error and frees the copy.
func takeError(status C.int32_t, msg *C.char) error {
	if msg == nil {
		if status >= 100 {
			return &Error{Code: Status(status)}
		}
		return nil
	}
	defer C.free(unsafe.Pointer(msg))
	return &Error{Code: Status(status), Message: C.GoString(msg)}
}

// takeJSON copies a library-owned JSON answer and frees it with ms_string_free.
func takeJSON(p *C.char) []byte {
	if p == nil {
		return nil
	}
	defer C.ms_string_free(p)
	return C.GoBytes(unsafe.Pointer(p), C.int(C.strlen(p)))
}

// cString is s as a C string for the library. C would stop at a NUL byte and
// act on another key id (or actor) than the one given: refused.
func cString(name, s string) (*C.char, error) {
	if strings.IndexByte(s, 0) >= 0 {
		return nil, invalidArgument(name+" contains a NUL byte", nil)
	}
	return C.CString(s), nil
}

// cStoreOpen opens with ms_store_open, or with ms_store_open_v2 when options
// (JSON) are given.
func cStoreOpen(path string, options []byte) (*C.ms_store, error) {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var h *C.ms_store
	var r C.msgo_ret
	if options == nil {
		r = C.msgo_store_open(cpath, &h)
	} else {
		copts := C.CString(string(options))
		defer C.free(unsafe.Pointer(copts))
		r = C.msgo_store_open_v2(cpath, copts, &h)
	}
	if err := takeError(r.status, r.err); err != nil {
		return nil, err
	}
	if r.status != 0 || h == nil {
		return nil, &Error{Code: StatusInternal, Message: "ms_store_open returned no handle"}
	}
	return h, nil
}

func cStoreClose(h *C.ms_store) { C.ms_store_close(h) }

// cCheck passes the key as pointer + length straight from the Go string's
// bytes: no C.CString allocation and copy per check. The bytes are only read
// during the call, contain no Go pointers, and the cgo call keeps them alive.
func cCheck(h *C.ms_store, key string, nowMS int64, out *Result) {
	var kp *C.char
	if len(key) > 0 {
		kp = (*C.char)(unsafe.Pointer(stringData(key)))
	}
	r := C.msgo_check(h, kp, C.size_t(len(key)), C.int64_t(nowMS))
	out.Status = Status(r.r.status)
	out.HTTPStatus = int(r.r.http_status)
	out.RetryAfter = time.Duration(r.r.retry_after_ms) * time.Millisecond
	out.QuotaLimit = int64(r.r.quota_limit)
	out.QuotaRemaining = int64(r.r.quota_remaining)
	out.QuotaReset = int64(r.r.quota_reset_ms)
	out.RateLimit = int64(r.r.rate_limit)
	out.RateRemaining = int64(r.r.rate_remaining)
	out.RateReset = int64(r.r.rate_reset_ms)
	// Not C.GoString(&r.r.key_id[0]): escape analysis cannot see into it,
	// so handing it an address inside r moved all of r (704 bytes, with the
	// fields' buffer) to the heap on every check. Reading the arrays here
	// keeps r on the stack.
	if r.r.key_id[0] != 0 {
		out.KeyID = cArrayString((*[len(r.r.key_id)]byte)(unsafe.Pointer(&r.r.key_id))[:])
	}
	if r.r.plan[0] != 0 {
		out.Plan = cArrayString((*[len(r.r.plan)]byte)(unsafe.Pointer(&r.r.plan))[:])
	}
	// The answer's fields stay bytes (no allocation): Headers and the
	// middleware turn them into strings only when they are asked for.
	out.fields.n = uint16(copy(out.fields.b[:], (*[C.MS_HTTP_FIELDS_MAX]byte)(unsafe.Pointer(&r.fields[0]))[:r.fields_len:r.fields_len]))
	out.Err = takeError(r.r.status, r.err)
	if out.Status.IsFailure() {
		// The library leaves out untouched on a failure: give it the
		// failure's HTTP status and "no policy" figures instead of zeros.
		out.HTTPStatus = out.Status.HTTPStatus()
		out.QuotaLimit, out.QuotaRemaining, out.RateLimit, out.RateRemaining = -1, -1, -1, -1
		out.RetryAfter, out.QuotaReset, out.RateReset = 0, 0, 0
	}
}

// cArrayString is the text of a NUL-terminated char array, copied.
func cArrayString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// answerFields is the answer's Retry-After / RateLimit-Policy / RateLimit
// fields as ms_store_check_http wrote them ("Name: value\r\n" lines), kept
// as bytes inside the Result: a check copies only the bytes written and
// allocates nothing for them; strings are made only when headers are set.
type answerFields struct {
	n uint16
	b [C.MS_HTTP_FIELDS_MAX]byte
}

// cCheckLoop runs n checks inside C (benchmark use only).
func cCheckLoop(h *C.ms_store, key string, nowMS int64, n int) Status {
	ck := C.CString(key)
	defer C.free(unsafe.Pointer(ck))
	return Status(C.msgo_check_loop(h, ck, C.size_t(len(key)), C.int64_t(nowMS), C.int64_t(n)))
}

func cKeyCreate(h *C.ms_store, spec []byte, nowMS int64) ([]byte, error) {
	cs := C.CString(string(spec))
	defer C.free(unsafe.Pointer(cs))
	var out *C.char
	r := C.msgo_key_create(h, cs, C.int64_t(nowMS), &out)
	js := takeJSON(out)
	return js, statusError(r)
}

// cKeyRevoke revokes with reason, or records "manual" when reason is nil.
func cKeyRevoke(h *C.ms_store, id string, reason *string, nowMS int64) error {
	cid, err := cString("key_id", id)
	if err != nil {
		return err
	}
	defer C.free(unsafe.Pointer(cid))
	var creason *C.char
	if reason != nil {
		if creason, err = cString("reason", *reason); err != nil {
			return err
		}
		defer C.free(unsafe.Pointer(creason))
	}
	return statusError(C.msgo_key_revoke(h, cid, creason, C.int64_t(nowMS)))
}

func cKeyUpdate(h *C.ms_store, id string, patch []byte) ([]byte, error) {
	cid, err := cString("key_id", id)
	if err != nil {
		return nil, err
	}
	defer C.free(unsafe.Pointer(cid))
	cp := C.CString(string(patch))
	defer C.free(unsafe.Pointer(cp))
	var out *C.char
	r := C.msgo_key_update(h, cid, cp, &out)
	js := takeJSON(out)
	return js, statusError(r)
}

func cKeyGet(h *C.ms_store, id string) ([]byte, error) {
	cid, err := cString("key_id", id)
	if err != nil {
		return nil, err
	}
	defer C.free(unsafe.Pointer(cid))
	var out *C.char
	r := C.msgo_key_get(h, cid, &out)
	js := takeJSON(out)
	return js, statusError(r)
}

func cKeyList(h *C.ms_store, filter []byte) ([]byte, error) {
	var cf *C.char // NULL: every key
	if filter != nil {
		cf = C.CString(string(filter))
		defer C.free(unsafe.Pointer(cf))
	}
	var out *C.char
	r := C.msgo_key_list(h, cf, &out)
	js := takeJSON(out)
	return js, statusError(r)
}

func cSetActor(h *C.ms_store, actor string) error {
	ca, err := cString("actor", actor)
	if err != nil {
		return err
	}
	defer C.free(unsafe.Pointer(ca))
	return statusError(C.msgo_set_actor(h, ca))
}

func cKeyRotate(h *C.ms_store, id string, opts []byte, nowMS int64) ([]byte, error) {
	cid, err := cString("key_id", id)
	if err != nil {
		return nil, err
	}
	defer C.free(unsafe.Pointer(cid))
	co := C.CString(string(opts))
	defer C.free(unsafe.Pointer(co))
	var out *C.char
	r := C.msgo_key_rotate(h, cid, co, C.int64_t(nowMS), &out)
	js := takeJSON(out)
	return js, statusError(r)
}

func cPlanPut(h *C.ms_store, plan []byte, nowMS int64) ([]byte, error) {
	cp := C.CString(string(plan))
	defer C.free(unsafe.Pointer(cp))
	var out *C.char
	r := C.msgo_plan_put(h, cp, C.int64_t(nowMS), &out)
	js := takeJSON(out)
	return js, statusError(r)
}

func cPlanList(h *C.ms_store) ([]byte, error) {
	var out *C.char
	r := C.msgo_plan_list(h, &out)
	js := takeJSON(out)
	return js, statusError(r)
}

func cPolicyPut(h *C.ms_store, policy []byte, nowMS int64) ([]byte, error) {
	cp := C.CString(string(policy))
	defer C.free(unsafe.Pointer(cp))
	var out *C.char
	r := C.msgo_policy_put(h, cp, C.int64_t(nowMS), &out)
	js := takeJSON(out)
	return js, statusError(r)
}

func cPolicyGet(h *C.ms_store) ([]byte, error) {
	var out *C.char
	r := C.msgo_policy_get(h, &out)
	js := takeJSON(out)
	return js, statusError(r)
}

func cAudit(h *C.ms_store, filter []byte) ([]byte, error) {
	var cf *C.char // NULL: the last 1000 events
	if filter != nil {
		cf = C.CString(string(filter))
		defer C.free(unsafe.Pointer(cf))
	}
	var out *C.char
	r := C.msgo_audit(h, cf, &out)
	js := takeJSON(out)
	return js, statusError(r)
}

func cUsage(h *C.ms_store, id string, fromMS, toMS int64) ([]byte, error) {
	cid, err := cString("key_id", id)
	if err != nil {
		return nil, err
	}
	defer C.free(unsafe.Pointer(cid))
	var out *C.char
	r := C.msgo_usage(h, cid, C.int64_t(fromMS), C.int64_t(toMS), &out)
	js := takeJSON(out)
	return js, statusError(r)
}

func cMetricsText(h *C.ms_store) ([]byte, error) {
	var out *C.char
	r := C.msgo_metrics_text(h, &out)
	js := takeJSON(out)
	return js, statusError(r)
}

// statusError maps an admin call's answer to an error. Admin calls answer
// MS_OK or an MS_ERR_*; a policy code here would be a library bug, and is
// reported rather than mistaken for success.
func statusError(r C.msgo_ret) error {
	if err := takeError(r.status, r.err); err != nil {
		return err
	}
	if r.status != 0 {
		return &Error{Code: Status(r.status), Message: "unexpected status from an admin call"}
	}
	return nil
}

func cStatusCode(s Status) string    { return C.GoString(C.ms_status_code(C.int32_t(s))) }
func cStatusMessage(s Status) string { return C.GoString(C.ms_status_message(C.int32_t(s))) }

// cStatusHTTP is also the benchmark's baseline: the cheapest cgo call there is.
func cStatusHTTP(s Status) int { return int(C.ms_status_http(C.int32_t(s))) }

func cErrorJSON(s Status) []byte {
	var buf [256]byte
	n := C.ms_error_json(C.int32_t(s), (*C.char)(unsafe.Pointer(&buf[0])), C.size_t(len(buf)))
	if int(n) < len(buf) {
		return append([]byte(nil), buf[:n]...)
	}
	big := make([]byte, int(n)+1)
	n = C.ms_error_json(C.int32_t(s), (*C.char)(unsafe.Pointer(&big[0])), C.size_t(len(big)))
	return big[:n]
}

func cVersion() string { return C.GoString(C.ms_version()) }
func cABIVersion() int { return int(C.ms_abi_version()) }
