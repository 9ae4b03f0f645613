package destinationstest

import (
	"context"
	"testing"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/destinations"
	"github.com/backflowhq/backflow/mapper"
)

// Build makes the destination cfg describes with kind, as a registry holding kind makes
// it for a run (version 1.2.3), and closes it when the test ends; closing it earlier as
// well is harmless.
func Build(t testing.TB, kind destinations.Kind, cfg config.Destination) destinations.Destination {
	t.Helper()
	r := destinations.NewRegistry()
	r.Register(kind)
	d, err := r.New(context.Background(), cfg, destinations.Env{Version: "1.2.3"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close(context.Background()) })
	return d
}

// BenchmarkWrites writes msgs to d once an iteration and reports messages per second.
func BenchmarkWrites(b *testing.B, d destinations.Destination, msgs []mapper.Message) {
	b.Helper()
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		if err := d.Write(context.Background(), msgs); err != nil {
			b.Fatal(err)
		}
		n += len(msgs)
	}
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "msgs/s")
}
