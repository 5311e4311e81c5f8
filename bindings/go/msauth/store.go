package msauth

// #include "ms_auth.h"
import "C"

import (
	"context"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// Store is an open key store (one SQLite file). It is safe for concurrent
// use by many goroutines; Close waits for calls in progress.
type Store struct {
	mu   sync.RWMutex // read: any call using h; write: Close
	h    *C.ms_store  // nil once closed
	path string
}

// liveHandles counts open C handles, and openedHandles every handle ever
// opened, so tests can see the finalizer and abandoned opens close theirs.
var liveHandles, openedHandles int64

// Open opens the store at path, creating the file when it does not exist.
// Several Stores may be open at once, also on the same file.
func Open(path string) (*Store, error) { return open(path, nil) }

// OpenWithOptions is Open with store options (ms_store_open_v2): the flush
// interval, the durability, the lock wait, and whether to create the store.
func OpenWithOptions(path string, opts Options) (*Store, error) {
	body, err := opts.MarshalJSON()
	if err != nil {
		return nil, invalidArgument("store options", err)
	}
	return open(path, body)
}

// OpenContext is OpenWithOptions under ctx: opening waits for another
// process's write lock while it creates or migrates the store, up to the
// busy timeout. When ctx ends during the open, the answer is an
// *InterruptedError and the Store opened late is closed in the background.
func OpenContext(ctx context.Context, path string, opts Options) (*Store, error) {
	body, err := opts.MarshalJSON()
	if err != nil {
		return nil, invalidArgument("store options", err)
	}
	return await(ctx, func() (*Store, error) { return open(path, body) }, func(s *Store) {
		if s != nil {
			_ = s.Close()
		}
	})
}

func open(path string, options []byte) (*Store, error) {
	if err := checkABI(); err != nil {
		return nil, err
	}
	h, err := cStoreOpen(path, options)
	if err != nil {
		return nil, err
	}
	atomic.AddInt64(&liveHandles, 1)
	atomic.AddInt64(&openedHandles, 1)
	s := &Store{h: h, path: path}
	// A Store dropped without Close still releases its handle (and the
	// SQLite connection and file descriptors behind it).
	runtime.SetFinalizer(s, (*Store).finalize)
	return s, nil
}

// Path is the path the store was opened with.
func (s *Store) Path() string { return s.path }

// Close releases the store. It waits for checks and admin calls in progress;
// calls after Close fail with ErrNotOpen. Closing twice is a no-op.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.h != nil {
		cStoreClose(s.h)
		s.h = nil
		atomic.AddInt64(&liveHandles, -1)
		runtime.SetFinalizer(s, nil)
	}
	return nil
}

func (s *Store) finalize() { _ = s.Close() }

var errClosed = &Error{Code: StatusNotOpen, Message: "the store is closed"}

// CheckKey decides on key at time now and, when it is admitted (Status OK),
// counts the request against the key's quota and rate limit. A refusal
// (missing, invalid, expired, revoked key, quota or rate limit) is a Result
// and a nil error. A library failure is a non-nil error (an *Error) with a
// Result whose Status (100 and up) and HTTPStatus are the failure's, never OK.
//
// The check takes no context: it does not wait on other processes (in the
// default batched durability it answers from shared memory in well under a
// microsecond).
func (s *Store) CheckKey(key string, now time.Time) (Result, error) {
	var r Result
	nowMS := now.UnixMilli()
	s.mu.RLock()
	if s.h == nil {
		s.mu.RUnlock()
		r.Status, r.HTTPStatus, r.Err = StatusNotOpen, StatusNotOpen.HTTPStatus(), errClosed
		r.QuotaLimit, r.QuotaRemaining, r.RateLimit, r.RateRemaining = -1, -1, -1, -1
		return r, r.Err
	}
	cCheck(s.h, key, nowMS, &r)
	s.mu.RUnlock()
	// s must stay reachable until the C call has returned, or its finalizer
	// could close the handle under it.
	runtime.KeepAlive(s)
	return r, r.Err
}

// CheckKeyNow is CheckKey at the current time.
func (s *Store) CheckKeyNow(key string) (Result, error) { return s.CheckKey(key, time.Now()) }

// Check is CheckKey with the library failure in Result.Err instead of a
// second return value.
//
// Deprecated: use CheckKey, which returns the failure as an error.
func (s *Store) Check(key string, now time.Time) Result {
	r, _ := s.CheckKey(key, now)
	return r
}

// CheckNow is Check at the current time.
//
// Deprecated: use CheckKeyNow.
func (s *Store) CheckNow(key string) Result { return s.Check(key, time.Now()) }

// with runs f with the open handle under ctx (see InterruptedError).
func (s *Store) with(ctx context.Context, f func(h *C.ms_store) error) error {
	// f writes only variables its caller reads after a nil error, which
	// await answers after f has returned: an abandoned f races with no reader.
	_, err := await(ctx, func() (struct{}, error) { return struct{}{}, s.call(f) }, nil)
	return err
}

// awaited is one result of f in await.
type awaited[T any] struct {
	v   T
	err error
}

// await answers f's result under ctx: a context ended before the call is its
// error, and f is not run; one that ends while f runs is an
// *InterruptedError at once. The C call inside f cannot be interrupted: f
// runs on in its goroutine to its end, and its late result goes to drop
// (nil: dropped as it is).
func await[T any](ctx context.Context, f func() (T, error), drop func(T)) (T, error) {
	var zero T
	if err := ctx.Err(); err != nil {
		return zero, err
	}
	if ctx.Done() == nil { // a context that never ends: no goroutine needed
		return f()
	}
	done := make(chan awaited[T], 1)
	go func() {
		v, err := f()
		done <- awaited[T]{v, err}
	}()
	select {
	case a := <-done:
		return a.v, a.err
	case <-ctx.Done():
		select {
		case a := <-done: // finished as the context ended: its answer stands
			return a.v, a.err
		default:
		}
		if drop != nil {
			go func() { drop((<-done).v) }()
		}
		return zero, &InterruptedError{Err: ctx.Err()}
	}
}

// call runs f with the open handle, holding Close off until f returns.
func (s *Store) call(f func(h *C.ms_store) error) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.h == nil {
		return errClosed
	}
	err := f(s.h)
	runtime.KeepAlive(s)
	return err
}

// CreateKey is CreateKeyContext without a context.
func (s *Store) CreateKey(spec KeySpec) (Created, error) {
	return s.CreateKeyAtContext(context.Background(), spec, time.Now())
}

// CreateKeyAt is CreateKeyAtContext without a context.
func (s *Store) CreateKeyAt(spec KeySpec, now time.Time) (Created, error) {
	return s.CreateKeyAtContext(context.Background(), spec, now)
}

// CreateKeyContext issues a key at the current time. The plaintext key is in
// the answer only: the store keeps a SHA-256 digest.
func (s *Store) CreateKeyContext(ctx context.Context, spec KeySpec) (Created, error) {
	return s.CreateKeyAtContext(ctx, spec, time.Now())
}

// CreateKeyAtContext is CreateKeyContext with an explicit creation time (the
// default expiry is counted from it).
func (s *Store) CreateKeyAtContext(ctx context.Context, spec KeySpec, now time.Time) (Created, error) {
	body, err := spec.MarshalJSON()
	if err != nil {
		return Created{}, invalidArgument("key spec", err)
	}
	var js []byte
	if err := s.with(ctx, func(h *C.ms_store) (e error) {
		js, e = cKeyCreate(h, body, now.UnixMilli())
		return e
	}); err != nil {
		return Created{}, err
	}
	return parseCreated(js)
}

// GetKey is GetKeyContext without a context.
func (s *Store) GetKey(id string) (Record, error) { return s.GetKeyContext(context.Background(), id) }

// GetKeyContext is the record of the key with this id (ErrNotFound when none).
func (s *Store) GetKeyContext(ctx context.Context, id string) (Record, error) {
	var js []byte
	if err := s.with(ctx, func(h *C.ms_store) (e error) {
		js, e = cKeyGet(h, id)
		return e
	}); err != nil {
		return Record{}, err
	}
	return parseRecord(js)
}

// ListKeys is ListKeysContext without a context.
func (s *Store) ListKeys(filter ListFilter) ([]Record, error) {
	return s.ListKeysContext(context.Background(), filter)
}

// ListKeysContext lists the keys matching filter (the zero ListFilter: all
// keys).
func (s *Store) ListKeysContext(ctx context.Context, filter ListFilter) ([]Record, error) {
	fjs, err := filter.json()
	if err != nil {
		return nil, invalidArgument("list filter", err)
	}
	var js []byte
	if err := s.with(ctx, func(h *C.ms_store) (e error) {
		js, e = cKeyList(h, fjs)
		return e
	}); err != nil {
		return nil, err
	}
	return parseList(js)
}

// UpdateKey is UpdateKeyContext without a context.
func (s *Store) UpdateKey(id string, patch KeyPatch) (Record, error) {
	return s.UpdateKeyContext(context.Background(), id, patch)
}

// UpdateKeyContext changes the fields the patch sets, and answers the new
// record.
func (s *Store) UpdateKeyContext(ctx context.Context, id string, patch KeyPatch) (Record, error) {
	body, err := patch.MarshalJSON()
	if err != nil {
		return Record{}, invalidArgument("key patch", err)
	}
	var js []byte
	if err := s.with(ctx, func(h *C.ms_store) (e error) {
		js, e = cKeyUpdate(h, id, body)
		return e
	}); err != nil {
		return Record{}, err
	}
	return parseRecord(js)
}

// RevokeKey is RevokeKeyContext without a context.
func (s *Store) RevokeKey(id string) error {
	return s.RevokeKeyAtContext(context.Background(), id, time.Now())
}

// RevokeKeyAt is RevokeKeyAtContext without a context.
func (s *Store) RevokeKeyAt(id string, now time.Time) error {
	return s.RevokeKeyAtContext(context.Background(), id, now)
}

// RevokeOption changes how RevokeKeyContext revokes a key.
type RevokeOption func(*revokeOptions)

type revokeOptions struct{ reason *string }

// WithReason records reason in the key's record and the audit log (what
// support staff read, e.g. "leaked in a public repository") instead of
// "manual". An empty reason, or one with control, bidirectional or invisible
// characters, is ErrInvalidArgument.
func WithReason(reason string) RevokeOption {
	return func(o *revokeOptions) { o.reason = &reason }
}

// RevokeKeyContext revokes the key now; it answers api_key_revoked from then
// on. A revoked key cannot be un-revoked, and revoking it again keeps its
// first reason. Without WithReason the reason is "manual".
func (s *Store) RevokeKeyContext(ctx context.Context, id string, opts ...RevokeOption) error {
	return s.RevokeKeyAtContext(ctx, id, time.Now(), opts...)
}

// RevokeKeyAtContext is RevokeKeyContext with an explicit revocation time.
func (s *Store) RevokeKeyAtContext(ctx context.Context, id string, now time.Time, opts ...RevokeOption) error {
	var o revokeOptions
	for _, opt := range opts {
		opt(&o)
	}
	return s.with(ctx, func(h *C.ms_store) error { return cKeyRevoke(h, id, o.reason, now.UnixMilli()) })
}
