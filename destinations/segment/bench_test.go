package segment_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/segmentio/analytics-go/v3"

	"github.com/backflowhq/backflow/destinations"
	"github.com/backflowhq/backflow/destinations/destinationstest"
	"github.com/backflowhq/backflow/destinations/segment"
	"github.com/backflowhq/backflow/mapper"
)

// benchMessages is how many messages one benchmark iteration sends each way.
const benchMessages = 10_000

func trackMessages(n int) []mapper.Message {
	base := destinationstest.Messages("bench", n)
	msgs := make([]mapper.Message, n)
	for i, m := range base {
		msgs[i] = destinationstest.NewMessage("track", m.ID, m.UserID, string(m.Body()), m.Timestamp())
	}
	return msgs
}

// BenchmarkSegment compares messages/s through the segment destination (Writes of 100,
// four at a time, as with max_in_flight 4) with analytics-go alone enqueueing the same
// number of ready-made analytics.Track messages (same properties, context and ids) to the
// same loopback server, and waiting for their callbacks: analytics-go's ceiling.
func BenchmarkSegment(b *testing.B) {
	srv := destinationstest.NewSegmentServer(b, destinationstest.SegmentServerOptions{WriteKey: writeKey, CountOnly: true})
	msgs := trackMessages(benchMessages)
	ours, err := segment.New(context.Background(), cfgFor(srv.URL), destinations.Env{Version: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	defer ours.Close(context.Background())
	alone := newAnalyticsAlone(b, srv.URL, msgs)
	defer alone.client.Close()

	var oursTime, aloneTime, oursCPU, aloneCPU time.Duration
	b.ResetTimer()
	for i := range b.N {
		// Alternate the order so that neither side always runs on a warmer machine.
		if i%2 == 0 {
			timeIt(&oursTime, &oursCPU, func() { writeAll(b, ours, msgs) })
			timeIt(&aloneTime, &aloneCPU, alone.run)
		} else {
			timeIt(&aloneTime, &aloneCPU, alone.run)
			timeIt(&oursTime, &oursCPU, func() { writeAll(b, ours, msgs) })
		}
	}
	b.StopTimer()
	n := float64(b.N * benchMessages)
	oursRate, aloneRate := n/oursTime.Seconds(), n/aloneTime.Seconds()
	b.ReportMetric(oursRate, "backflow-msgs/s")
	b.ReportMetric(aloneRate, "analytics-go-msgs/s")
	b.ReportMetric(oursRate/aloneRate, "ratio")
	// CPU time of the whole process (client and loopback server) per message: on a shared
	// machine, wall-clock rates move with the neighbours' load, CPU per message much less.
	b.ReportMetric(float64(oursCPU.Microseconds())/n, "backflow-cpu-µs/msg")
	b.ReportMetric(float64(aloneCPU.Microseconds())/n, "analytics-go-cpu-µs/msg")
	b.ReportMetric(float64(aloneCPU)/float64(oursCPU), "cpu-ratio")
	b.ReportMetric(0, "ns/op") // an iteration is two runs of 10,000 messages: not meaningful
}

// timeIt adds f's wall-clock and process CPU time to wall and cpu.
func timeIt(wall, cpu *time.Duration, f func()) {
	c0, start := processCPU(), time.Now()
	f()
	*wall += time.Since(start)
	*cpu += processCPU() - c0
}

func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func writeAll(b *testing.B, d destinations.Destination, msgs []mapper.Message) {
	next := make(chan []mapper.Message)
	go func() {
		for start := 0; start < len(msgs); start += 100 {
			next <- msgs[start:min(start+100, len(msgs))]
		}
		close(next)
	}()
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for batch := range next {
				if err := d.Write(context.Background(), batch); err != nil {
					b.Error(err)
				}
			}
		})
	}
	wg.Wait()
}

// analyticsAlone is analytics-go used directly, as its own documentation shows.
type analyticsAlone struct {
	client analytics.Client
	msgs   []analytics.Track
	done   atomic.Int64
	fail   atomic.Int64
	all    chan struct{}
	target int64
	mu     sync.Mutex
}

func newAnalyticsAlone(b *testing.B, endpoint string, msgs []mapper.Message) *analyticsAlone {
	lib := &analytics.Context{Library: analytics.LibraryInfo{Name: "backflow", Version: "bench"}}
	a := &analyticsAlone{}
	for _, m := range msgs {
		var props analytics.Properties
		if err := json.Unmarshal(m.Body(), &props); err != nil {
			b.Fatal(err)
		}
		ts, _ := time.Parse(time.RFC3339Nano, m.Timestamp())
		a.msgs = append(a.msgs, analytics.Track{MessageId: m.ID, UserId: m.UserID, Event: m.Event,
			Timestamp: ts, Context: lib, Properties: props})
	}
	// Enough idle connections for all its concurrent requests: with Go's default of 2 per
	// host, analytics-go would reconnect for most batches and the ceiling would be too low.
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 256
	client, err := analytics.NewWithConfig(writeKey, analytics.Config{
		Endpoint: endpoint, BatchSize: 100, Transport: tr, Callback: a,
		Logger: analytics.StdLogger(nil),
	})
	if err != nil {
		b.Fatal(err)
	}
	a.client = client
	return a
}

func (a *analyticsAlone) Success(analytics.Message) { a.tick() }
func (a *analyticsAlone) Failure(analytics.Message, error) {
	a.fail.Add(1)
	a.tick()
}

func (a *analyticsAlone) tick() {
	if a.done.Add(1) == a.target {
		close(a.all)
	}
}

// run enqueues every message and waits for all their callbacks.
func (a *analyticsAlone) run() {
	a.done.Store(0)
	a.all = make(chan struct{})
	a.target = int64(len(a.msgs))
	for _, m := range a.msgs {
		if err := a.client.Enqueue(m); err != nil {
			panic(fmt.Sprint("enqueue: ", err))
		}
	}
	<-a.all
	if n := a.fail.Load(); n > 0 {
		panic(fmt.Sprintf("%d analytics-go failures", n))
	}
}
