// The Go host of the cross-host test: msauth.Middleware in front of an app
// that answers "ok\n". Usage: goserver STORE; prints the port it listens on.
package main

import (
	"fmt"
	"net"
	"net/http"
	"os"

	"github.com/ms-auth/ms-auth/bindings/go/msauth"
)

func main() {
	store, err := msauth.Open(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write([]byte("ok\n"))
	})
	fmt.Println(ln.Addr().(*net.TCPAddr).Port)
	if err := http.Serve(ln, msauth.Middleware(store)(app)); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
