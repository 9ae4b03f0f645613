package stdout_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/destinations"
	"github.com/backflowhq/backflow/destinations/destinationstest"
	"github.com/backflowhq/backflow/destinations/stdout"
)

func build(t *testing.T, env destinations.Env) destinations.Destination {
	t.Helper()
	r := destinations.NewRegistry()
	r.Register(stdout.Kind())
	d, err := r.New(context.Background(), config.Destination{
		Type: stdout.Type, Name: "stdout", Options: &stdout.Options{}, BatchSize: 1000,
		Retry: config.Retry{MaxAttempts: 3, MaxBackoff: 50 * time.Millisecond}, Timeout: 10 * time.Second,
	}, env)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestSuite(t *testing.T) {
	destinationstest.RunSuite(t, func(t *testing.T) (destinations.Destination, destinationstest.Receiver) {
		buf := &destinationstest.LineBuffer{}
		return build(t, destinations.Env{Stdout: buf}), buf
	})
}

func TestLinesAreTheMessagesBytes(t *testing.T) {
	buf := &destinationstest.LineBuffer{}
	d := build(t, destinations.Env{Stdout: buf})
	msgs := destinationstest.Messages("bytes", 2)
	if err := d.Write(context.Background(), msgs); err != nil {
		t.Fatal(err)
	}
	want := string(msgs[0].JSON) + "\n" + string(msgs[1].JSON) + "\n"
	if got := string(buf.Bytes()); got != want {
		t.Errorf("wrote %q, want %q", got, want)
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("broken pipe") }

func TestWriterError(t *testing.T) {
	d := build(t, destinations.Env{Stdout: failingWriter{}})
	err := d.Write(context.Background(), destinationstest.Messages("x", 1))
	if err == nil || destinations.IsRetryable(err) {
		t.Errorf("Write = %v, want a non-retryable error", err)
	}
}
