package msauth

// #include "ms_auth.h"
import "C"

import (
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

// liveHandles counts open C handles, so tests can see the finalizer work.
var liveHandles int64

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

func open(path string, options []byte) (*Store, error) {
	if err := checkABI(); err != nil {
		return nil, err
	}
	h, err := cStoreOpen(path, options)
	if err != nil {
		return nil, err
	}
	atomic.AddInt64(&liveHandles, 1)
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

// Check decides on key at time now and, when it is admitted (Status OK),
// counts the request against the key's quota and rate limit. A library
// failure is a Result with a Status of 100 and up and a non-nil Err: never OK.
func (s *Store) Check(key string, now time.Time) Result {
	var r Result
	nowMS := now.UnixMilli()
	s.mu.RLock()
	if s.h == nil {
		s.mu.RUnlock()
		r.Status, r.HTTPStatus, r.Err = StatusNotOpen, StatusNotOpen.HTTPStatus(), errClosed
		r.QuotaLimit, r.QuotaRemaining, r.RateLimit, r.RateRemaining = -1, -1, -1, -1
		return r
	}
	cCheck(s.h, key, nowMS, &r)
	s.mu.RUnlock()
	// s must stay reachable until the C call has returned, or its finalizer
	// could close the handle under it.
	runtime.KeepAlive(s)
	return r
}

// CheckNow is Check at the current time.
func (s *Store) CheckNow(key string) Result { return s.Check(key, time.Now()) }

// with runs f with the open handle, holding Close off until f returns.
func (s *Store) with(f func(h *C.ms_store) error) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.h == nil {
		return errClosed
	}
	err := f(s.h)
	runtime.KeepAlive(s)
	return err
}

// CreateKey issues a key at the current time. The plaintext key is in the
// answer only: the store keeps a SHA-256 digest.
func (s *Store) CreateKey(spec KeySpec) (Created, error) { return s.CreateKeyAt(spec, time.Now()) }

// CreateKeyAt is CreateKey with an explicit creation time (the default
// expiry is counted from it).
func (s *Store) CreateKeyAt(spec KeySpec, now time.Time) (Created, error) {
	body, err := spec.MarshalJSON()
	if err != nil {
		return Created{}, invalidArgument("key spec", err)
	}
	var js []byte
	if err := s.with(func(h *C.ms_store) (e error) {
		js, e = cKeyCreate(h, body, now.UnixMilli())
		return e
	}); err != nil {
		return Created{}, err
	}
	return parseCreated(js)
}

// GetKey is the record of the key with this id (ErrNotFound when none).
func (s *Store) GetKey(id string) (Record, error) {
	var js []byte
	if err := s.with(func(h *C.ms_store) (e error) {
		js, e = cKeyGet(h, id)
		return e
	}); err != nil {
		return Record{}, err
	}
	return parseRecord(js)
}

// ListKeys lists the keys matching filter (the zero ListFilter: all keys).
func (s *Store) ListKeys(filter ListFilter) ([]Record, error) {
	fjs, err := filter.json()
	if err != nil {
		return nil, invalidArgument("list filter", err)
	}
	var js []byte
	if err := s.with(func(h *C.ms_store) (e error) {
		js, e = cKeyList(h, fjs)
		return e
	}); err != nil {
		return nil, err
	}
	return parseList(js)
}

// UpdateKey changes the fields the patch sets, and answers the new record.
func (s *Store) UpdateKey(id string, patch KeyPatch) (Record, error) {
	body, err := patch.MarshalJSON()
	if err != nil {
		return Record{}, invalidArgument("key patch", err)
	}
	var js []byte
	if err := s.with(func(h *C.ms_store) (e error) {
		js, e = cKeyUpdate(h, id, body)
		return e
	}); err != nil {
		return Record{}, err
	}
	return parseRecord(js)
}

// RevokeKey revokes the key now; it answers api_key_revoked from then on.
// A revoked key cannot be un-revoked.
func (s *Store) RevokeKey(id string) error { return s.RevokeKeyAt(id, time.Now()) }

// RevokeKeyAt is RevokeKey with an explicit revocation time.
func (s *Store) RevokeKeyAt(id string, now time.Time) error {
	return s.with(func(h *C.ms_store) error { return cKeyRevoke(h, id, now.UnixMilli()) })
}
