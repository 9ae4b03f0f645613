package braze_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/backflowhq/backflow/destinations/destinationstest"
)

// BenchmarkWrite: Writes of 1,000 messages (identify, track and group in turn) to a
// loopback server that reads each body and accepts it: what the adapter costs (mapping
// to the API's shape, cutting, HTTP), not what the service would.
func BenchmarkWrite(b *testing.B) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.WriteHeader(201)
		io.WriteString(w, `{"message":"success"}`)
	}))
	defer srv.Close()
	d := build(b, cfgFor(srv.URL))
	msgs := destinationstest.Messages("bench", 1000)
	destinationstest.BenchmarkWrites(b, d, msgs)
}
