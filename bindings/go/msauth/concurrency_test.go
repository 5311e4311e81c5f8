package msauth

import (
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Many goroutines (on several OS threads) racing on one key never admit more
// than the quota, and every other answer is quota exceeded.
func TestConcurrentChecksNeverExceedQuota(t *testing.T) {
	s := openTemp(t)
	const quota, workers, each = 300, 16, 50
	k := mustCreate(t, s, KeySpec{Quota: &Quota{Limit: quota, Period: Daily}, RateLimit: Null[RateLimit]()}, t0)

	var admitted, refused, other int64
	var wg sync.WaitGroup
	start := make(chan struct{})
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for i := 0; i < each; i++ {
				switch r, _ := s.CheckKey(k.Key, t0); r.Status {
				case StatusOK:
					atomic.AddInt64(&admitted, 1)
				case StatusAPIKeyQuotaExceeded:
					atomic.AddInt64(&refused, 1)
				default:
					atomic.AddInt64(&other, 1)
				}
			}
		}()
	}
	close(start)
	wg.Wait()
	if admitted != quota || refused != workers*each-quota || other != 0 {
		t.Fatalf("admitted %d, refused %d, other %d; want %d, %d, 0", admitted, refused, other, quota, workers*each-quota)
	}
	rec, err := s.GetKey(k.Record.ID)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Usage.Used != quota {
		t.Fatalf("stored usage %d, want %d", rec.Usage.Used, quota)
	}
}

// Close while checks run: it waits for them, later checks answer NotOpen,
// nothing crashes and the race detector sees no race.
func TestCloseDuringChecks(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "keys.db"))
	if err != nil {
		t.Fatal(err)
	}
	k := mustCreate(t, s, KeySpec{RateLimit: Null[RateLimit]()}, t0)
	var wg sync.WaitGroup
	var ok, closed, other int64
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				r, err := s.CheckKey(k.Key, t0)
				switch {
				case r.OK():
					atomic.AddInt64(&ok, 1)
				case errors.Is(err, ErrNotOpen):
					atomic.AddInt64(&closed, 1)
					return
				default:
					atomic.AddInt64(&other, 1)
					return
				}
			}
		}()
	}
	time.Sleep(50 * time.Millisecond)
	var cwg sync.WaitGroup
	for i := 0; i < 3; i++ { // concurrent Closes are safe too
		cwg.Add(1)
		go func() { defer cwg.Done(); _ = s.Close() }()
	}
	cwg.Wait()
	wg.Wait()
	if ok == 0 || closed != 8 || other != 0 {
		t.Fatalf("ok %d, closed %d, other %d", ok, closed, other)
	}
}

// ms_last_error() is per OS thread: under load from many goroutines, each
// failure must carry its own message, never another call's.
func TestErrorMessagesStayWithTheirCall(t *testing.T) {
	s := openTemp(t)
	k := mustCreate(t, s, KeySpec{RateLimit: Null[RateLimit]()}, t0)
	var wg sync.WaitGroup
	errs := make(chan string, 64)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				id := fmt.Sprintf("missing-%d-%d", w, i)
				_, err := s.GetKey(id)
				var e *Error
				if !errors.As(err, &e) || e.Code != StatusNotFound {
					errs <- fmt.Sprintf("GetKey(%s) = %v", id, err)
					return
				}
				if !strings.Contains(e.Message, id) {
					errs <- fmt.Sprintf("GetKey(%s) carried %q", id, e.Message)
					return
				}
				// Interleave successful checks and other failures on the same threads.
				if r, _ := s.CheckKey(k.Key, t0); !r.OK() {
					errs <- "check: " + r.Status.String()
					return
				}
				if r, err := s.CheckKey(k.Key, time.Unix(1, 0)); r.Status != StatusInvalidArgument || err == nil ||
					strings.Contains(err.Error(), "missing-") {
					errs <- fmt.Sprintf("bad clock: %v %v", r.Status, err)
					return
				}
				runtime.Gosched()
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

// A Store dropped without Close is closed by its finalizer.
func TestFinalizerClosesForgottenStore(t *testing.T) {
	dir := t.TempDir()
	before := atomic.LoadInt64(&liveHandles)
	func() {
		for i := 0; i < 5; i++ {
			s, err := Open(filepath.Join(dir, fmt.Sprintf("forgotten-%d.db", i)))
			if err != nil {
				t.Fatal(err)
			}
			if r, _ := s.CheckKey("", t0); r.Status != StatusAPIKeyMissing {
				t.Fatal(r.Status)
			}
		}
	}()
	if got := atomic.LoadInt64(&liveHandles); got != before+5 {
		t.Fatalf("open handles %d, want %d", got, before+5)
	}
	deadline := time.Now().Add(10 * time.Second)
	for atomic.LoadInt64(&liveHandles) != before {
		if time.Now().After(deadline) {
			t.Fatalf("finalizers left %d handles open", atomic.LoadInt64(&liveHandles)-before)
		}
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
	// Close after the finalizer's work would be a double free in C; an
	// explicitly closed Store clears its finalizer, so this stays at zero.
	s, err := Open(filepath.Join(dir, "closed.db"))
	if err != nil {
		t.Fatal(err)
	}
	_ = s.Close()
	runtime.GC()
	time.Sleep(10 * time.Millisecond)
	if got := atomic.LoadInt64(&liveHandles); got != before {
		t.Fatalf("open handles %d after explicit Close + GC, want %d", got, before)
	}
}
