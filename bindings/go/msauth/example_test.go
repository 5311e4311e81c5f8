package msauth_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/ms-auth/ms-auth/bindings/go/msauth"
)

func Example() {
	dir, _ := os.MkdirTemp("", "msauth-example")
	defer os.RemoveAll(dir)

	store, err := msauth.Open(filepath.Join(dir, "keys.db"))
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()
	created, err := store.CreateKey(msauth.KeySpec{Plan: "pro", Quota: &msauth.Quota{Limit: 10000, Period: msauth.Daily}})
	if err != nil {
		log.Fatal(err)
	}
	res, err := store.CheckKeyNow(created.Key) // err: a library failure; a refusal is a Status
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(res.Status, res.HTTPStatus, res.Plan, res.QuotaRemaining)
	missing, _ := store.CheckKeyNow("")
	fmt.Println(missing.Status)

	// In a server: every request must carry a valid X-API-Key.
	_ = msauth.Middleware(store)(http.NotFoundHandler())
	// Output:
	// ok 200 pro 9999
	// api_key_missing
}

// A customer portal: the customer rotates a key and reads its usage; the
// operator sets plans and policies and serves the metrics.
func Example_lifecycle() {
	dir, _ := os.MkdirTemp("", "msauth-example")
	defer os.RemoveAll(dir)
	store, err := msauth.OpenWithOptions(filepath.Join(dir, "keys.db"), msauth.Options{BusyTimeout: msauth.Some(2 * time.Second)})
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()
	_ = store.SetActor("portal:alice@example.com")
	// An admin call waits at most as long as its context allows (in a
	// handler: the request's context). See InterruptedError for what an
	// ended context means.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	plan, _ := store.PutPlanContext(ctx, msauth.Plan{Name: "pro", Quota: &msauth.Quota{Limit: 10000, Period: msauth.Daily},
		RateLimit: msauth.Some(msauth.RateLimit{Limit: 100, Per: time.Minute}), Lifetime: 90 * 24 * time.Hour})
	old, _ := store.CreateKeyContext(ctx, msauth.KeySpec{Plan: plan.Name})
	since := time.Now()
	_, _ = store.CheckKeyNow(old.Key)
	created, err := store.RotateKeyContext(ctx, old.Record.ID, time.Hour)
	var interrupted *msauth.InterruptedError
	if errors.As(err, &interrupted) {
		log.Fatal("gave up waiting; the rotation may still have happened: ", err)
	} else if err != nil {
		log.Fatal(err)
	}
	fmt.Println(*created.Record.RotatedFrom == old.Record.ID, created.Record.Usage.Used)

	pol, _ := store.SetPolicyContext(ctx, msauth.Policies{Idle: msauth.Some(90 * 24 * time.Hour)})
	idle, _ := pol.Idle.Get()
	fmt.Println(idle, pol.Abuse.IsNull())

	hist, _ := store.UsageContext(ctx, created.Record.ID, since, time.Now()) // one UTC day, or two across midnight
	var admitted, limited int64
	for _, d := range hist.Days {
		admitted += d.Admitted
		limited += d.Rejected[msauth.StatusRateLimitExceeded]
	}
	fmt.Println(admitted, limited)
	events, _ := store.AuditContext(ctx, msauth.AuditFilter{KeyID: old.Record.ID})
	for _, e := range events {
		fmt.Println(e.Action, e.Actor)
	}
	http.Handle("/metrics", msauth.MetricsHandler(store))
	// Output:
	// true 1
	// 2160h0m0s true
	// 1 0
	// key.create portal:alice@example.com
	// key.rotate portal:alice@example.com
}
