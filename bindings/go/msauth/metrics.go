package msauth

import (
	"io"
	"net/http"
	"strconv"
)

// MetricsContentType is the Content-Type of the Prometheus text format.
const MetricsContentType = "text/plain; version=0.0.4"

// MetricsHandler serves store.MetricsText, for a host's own /metrics. A
// library failure answers 503 with a one-line body naming the failure's code,
// never ms_last_error() (which may name files): WithErrorHandler sees the
// error. The other Options do not apply here.
func MetricsHandler(store *Store, opts ...Option) http.Handler {
	var c config
	for _, o := range opts {
		o(&c)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		text, err := store.MetricsTextContext(r.Context())
		if err != nil {
			if c.onError != nil {
				c.onError(r, err)
			}
			http.Error(w, "ms-auth metrics unavailable: "+StatusOf(err).String(), http.StatusServiceUnavailable)
			return
		}
		h := w.Header()
		h.Set("Content-Type", MetricsContentType)
		h.Set("Content-Length", strconv.Itoa(len(text)))
		_, _ = io.WriteString(w, text)
	})
}
