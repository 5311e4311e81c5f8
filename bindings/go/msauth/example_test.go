package msauth_test

import (
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
	res := store.CheckNow(created.Key)
	fmt.Println(res.Status, res.HTTPStatus, res.Plan, res.QuotaRemaining)
	fmt.Println(store.CheckNow("").Status)

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

	plan, _ := store.PutPlan(msauth.Plan{Name: "pro", Quota: &msauth.Quota{Limit: 10000, Period: msauth.Daily},
		Lifetime: 90 * 24 * time.Hour})
	old, _ := store.CreateKey(msauth.KeySpec{Plan: plan.Name})
	since := time.Now()
	store.CheckNow(old.Key)
	created, err := store.RotateKey(old.Record.ID, time.Hour)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(*created.Record.RotatedFrom == old.Record.ID, created.Record.Usage.Used)

	pol, _ := store.SetPolicy(msauth.Policies{Idle: msauth.Some(90 * 24 * time.Hour)})
	idle, _ := pol.Idle.Get()
	fmt.Println(idle, pol.Abuse.IsNull())

	hist, _ := store.Usage(created.Record.ID, since, time.Now()) // one UTC day, or two across midnight
	var admitted, limited int64
	for _, d := range hist.Days {
		admitted += d.Admitted
		limited += d.Rejected[msauth.StatusRateLimitExceeded]
	}
	fmt.Println(admitted, limited)
	events, _ := store.Audit(msauth.AuditFilter{KeyID: old.Record.ID})
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
