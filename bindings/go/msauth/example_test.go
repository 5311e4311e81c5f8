package msauth_test

import (
	"fmt"
	"log"
	"net/http"
	"os"
	"path/filepath"

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
