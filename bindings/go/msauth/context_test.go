package msauth

import (
	"bufio"
	"context"
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// holdWriteLock holds the store's write lock from another process (the
// sqlite3 shell, inside BEGIN IMMEDIATE) until the returned func is called.
func holdWriteLock(t *testing.T, path string) (release func()) {
	t.Helper()
	cmd := exec.Command("sqlite3", path)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("sqlite3 (the context tests need the sqlite3 shell): %v", err)
	}
	if _, err := in.Write([]byte("BEGIN IMMEDIATE;\nSELECT 'held';\n")); err != nil {
		t.Fatal(err)
	}
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || strings.TrimSpace(line) != "held" {
		t.Fatalf("sqlite3 did not take the lock: %q %v", line, err)
	}
	done := false
	release = func() {
		if !done {
			done = true
			_, _ = in.Write([]byte("ROLLBACK;\n"))
			_ = in.Close()
			_ = cmd.Wait()
		}
	}
	t.Cleanup(release)
	return release
}

func TestContextEndsWhileAdminCallWaitsForLock(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.db")
	s, err := OpenWithOptions(path, Options{BusyTimeout: Some(4 * time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	k := mustCreate(t, s, KeySpec{}, t0)
	release := holdWriteLock(t, path)

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = s.RevokeKeyContext(ctx, k.Record.ID)
	waited := time.Since(start)
	var ie *InterruptedError
	if !errors.As(err, &ie) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("RevokeKeyContext under a held lock = %v, want an *InterruptedError wrapping DeadlineExceeded", err)
	}
	if waited > 2*time.Second {
		t.Errorf("returned after %v: the context's deadline (200ms) did not end the wait", waited)
	}
	if StatusOf(err) != StatusInternal || errors.Is(err, ErrStore) {
		t.Errorf("StatusOf(%v) = %v", err, StatusOf(err))
	}

	// The abandoned call runs on: once the lock is free it takes effect, and
	// Close waits for it.
	release()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	r, err := s2.GetKeyContext(context.Background(), k.Record.ID)
	if err != nil || r.State != StateRevoked {
		t.Errorf("after the abandoned revoke: state %q %v, want revoked", r.State, err)
	}
}

func TestContextEndedBeforeCallDoesNothing(t *testing.T) {
	s := openTemp(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := s.CreateKeyContext(ctx, KeySpec{Name: "never"})
	var ie *InterruptedError
	if !errors.Is(err, context.Canceled) || errors.As(err, &ie) {
		t.Fatalf("CreateKeyContext with a cancelled context = %v, want context.Canceled itself", err)
	}
	for name, call := range map[string]func() error{
		"ListKeysContext":    func() error { _, e := s.ListKeysContext(ctx, ListFilter{}); return e },
		"ListKeyPageContext": func() error { _, e := s.ListKeyPageContext(ctx, KeyFilter{}); return e },
		"PutPlanContext":     func() error { _, e := s.PutPlanContext(ctx, Plan{Name: "p"}); return e },
		"SetPolicyContext":   func() error { _, e := s.SetPolicyContext(ctx, Policies{Idle: Some(30 * day)}); return e },
		"AuditContext":       func() error { _, e := s.AuditContext(ctx, AuditFilter{}); return e },
		"UsageContext":       func() error { _, e := s.UsageContext(ctx, "k", t0, t0); return e },
		"MetricsTextContext": func() error { _, e := s.MetricsTextContext(ctx); return e },
	} {
		if err := call(); !errors.Is(err, context.Canceled) {
			t.Errorf("%s with a cancelled context = %v", name, err)
		}
	}
	keys, err := s.ListKeys(ListFilter{})
	if err != nil || len(keys) != 0 {
		t.Errorf("keys after cancelled calls: %d %v, want none", len(keys), err)
	}
	plans, err := s.Plans()
	if err != nil || len(plans) != 0 {
		t.Errorf("plans after cancelled calls: %d %v, want none", len(plans), err)
	}
}

func TestContextCallsAnswerLikeThePlainOnes(t *testing.T) {
	s := openTemp(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := s.CreateKeyAtContext(ctx, KeySpec{Name: "a", RateLimit: Some(RateLimit{Limit: 2, Per: 1500 * time.Millisecond})}, t0)
	if err != nil {
		t.Fatal(err)
	}
	id := c.Record.ID
	if rl := c.Record.RateLimit; rl == nil || rl.Per != 1500*time.Millisecond || rl.WindowMS != 1500 {
		t.Errorf("rate limit answered %+v", rl)
	}
	if r, err := s.UpdateKeyContext(ctx, id, KeyPatch{Name: Some("b")}); err != nil || *r.Name != "b" {
		t.Fatalf("UpdateKeyContext: %v %v", r.Name, err)
	}
	if _, err := s.RotateKeyAtContext(ctx, id, 0, t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := s.RevokeKeyAtContext(ctx, id, t0.Add(2*time.Minute)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetKeyContext(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetKeyContext of an unknown id = %v, want ErrNotFound", err)
	}
	events, err := s.AuditContext(ctx, AuditFilter{KeyID: id})
	if err != nil {
		t.Fatal(err)
	}
	var actions []string
	for _, e := range events {
		actions = append(actions, e.Action)
	}
	if got := strings.Join(actions, ","); got != "key.create,key.update,key.rotate,key.revoke" {
		t.Errorf("audit actions %s", got)
	}
	if _, err := s.PolicyContext(ctx); err != nil {
		t.Error(err)
	}
}

func TestCheckKeyReturnsLibraryFailureAsError(t *testing.T) {
	s := openTemp(t)
	c := mustCreate(t, s, KeySpec{}, t0)
	if r, err := s.CheckKey(c.Key, t0); err != nil || !r.OK() {
		t.Errorf("CheckKey of a good key = %v %v", r.Status, err)
	}
	// A refusal is an answer, not an error.
	if r, err := s.CheckKey("ms_live_nope", t0); err != nil || r.Status != StatusAPIKeyInvalid || r.HTTPStatus != 401 {
		t.Errorf("CheckKey of an unknown key = %v %d %v", r.Status, r.HTTPStatus, err)
	}
	_ = s.Close()
	r, err := s.CheckKey(c.Key, t0)
	if !errors.Is(err, ErrNotOpen) || r.Status != StatusNotOpen || r.HTTPStatus != 503 || r.OK() {
		t.Errorf("CheckKey on a closed store = %v %d %v", r.Status, r.HTTPStatus, err)
	}
	// The deprecated form still carries the failure in Result.Err.
	if old := s.Check(c.Key, t0); !errors.Is(old.Err, ErrNotOpen) || old.Status != StatusNotOpen {
		t.Errorf("Check on a closed store = %v %v", old.Status, old.Err)
	}
}

func TestRateLimitPer(t *testing.T) {
	js, err := RateLimit{Limit: 5, Per: 1500 * time.Millisecond}.MarshalJSON()
	if err != nil || string(js) != `{"limit":5,"window_ms":1500}` {
		t.Errorf("MarshalJSON = %s %v", js, err)
	}
	s := openTemp(t)
	// The deprecated WindowMS alone still works, and answers fill in Per.
	c := mustCreate(t, s, KeySpec{RateLimit: Some(RateLimit{Limit: 5, WindowMS: 2000})}, t0)
	if rl := c.Record.RateLimit; rl == nil || rl.Per != 2*time.Second || rl.Window() != 2*time.Second {
		t.Errorf("WindowMS 2000 answered %+v", rl)
	}
	_, err = s.CreateKeyAt(KeySpec{RateLimit: Some(RateLimit{Limit: 5, Per: 1500 * time.Microsecond})}, t0)
	refused(t, "a fraction of a millisecond", err, "not a whole number of milliseconds")
	_, err = s.CreateKeyAt(KeySpec{RateLimit: Some(RateLimit{Limit: 5, Per: time.Second, WindowMS: 2000})}, t0)
	refused(t, "Per and WindowMS disagreeing", err, "disagree")
	if keys, _ := s.ListKeys(ListFilter{}); len(keys) != 1 {
		t.Errorf("%d keys after two refused specs, want 1", len(keys))
	}
}

func TestOpenContextEndsWhileWaitingForLock(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.db")
	s, err := OpenContext(context.Background(), path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	_ = s.Close()
	before, opened := atomic.LoadInt64(&liveHandles), atomic.LoadInt64(&openedHandles)
	release := holdWriteLock(t, path)

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	s, err = OpenContext(ctx, path, Options{BusyTimeout: Some(4 * time.Second)})
	var ie *InterruptedError
	if s != nil || !errors.As(err, &ie) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("OpenContext under a held lock = %v %v, want an *InterruptedError", s, err)
	}
	if waited := time.Since(start); waited > 2*time.Second {
		t.Errorf("returned after %v: the context's deadline (200ms) did not end the wait", waited)
	}
	// Once the lock is free the open completes, and the Store nobody got is
	// closed: no handle is left open.
	release()
	deadline := time.Now().Add(10 * time.Second)
	for atomic.LoadInt64(&openedHandles) == opened && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if atomic.LoadInt64(&openedHandles) == opened {
		t.Fatal("the abandoned open did not complete once the lock was free")
	}
	for atomic.LoadInt64(&liveHandles) != before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := atomic.LoadInt64(&liveHandles); n != before {
		t.Errorf("%d open handles after the abandoned open, want %d", n, before)
	}
	ctx2, cancel2 := context.WithTimeout(context.Background(), time.Minute)
	defer cancel2()
	s, err = OpenContext(ctx2, path, Options{Create: Some(false)})
	if err != nil {
		t.Fatal(err)
	}
	_ = s.Close()
}
