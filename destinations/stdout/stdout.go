// Package stdout is the stdout destination: each message becomes one JSON line on the
// process's standard output (or the writer the pipeline gives in Env.Stdout), for
// previews, debugging and piping into other tools. A Write is acknowledged once its
// lines were written.
//
// Sample config:
//
//	destinations:
//	  - type: stdout
package stdout

import (
	"context"
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/destinations"
	"github.com/backflowhq/backflow/mapper"
)

var _ destinations.Destination = (*Stdout)(nil)

// Stdout writes JSON lines to a writer; a mutex keeps the lines of one Write together.
type Stdout struct {
	mu     sync.Mutex
	w      io.Writer
	buf    []byte
	closed bool
}

// Type is the stdout destination's type name in the configuration.
const Type = "stdout"

// Options: the stdout destination has no keys of its own.
type Options struct{}

// Prepare has nothing to check.
func (*Options) Prepare(*config.OptionsCheck) {}

// Kind is the stdout destination's kind: one writer, 1,000 lines per write.
func Kind() destinations.Kind {
	return destinations.Kind{
		Type: Type,
		Kind: config.Kind{MaxInFlight: 1, BatchSize: 1000, NewOptions: func() config.Options { return &Options{} }},
		New:  New,
	}
}

// New is the stdout destination's Factory. It writes to env.Stdout, or to os.Stdout
// when that is nil.
func New(_ context.Context, _ config.Destination, env destinations.Env) (destinations.Destination, error) {
	w := env.Stdout
	if w == nil {
		w = os.Stdout
	}
	return &Stdout{w: w}, nil
}

// Write writes msgs as JSON lines in one call to the writer.
func (d *Stdout) Write(ctx context.Context, msgs []mapper.Message) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return destinations.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	d.buf = d.buf[:0]
	for i := range msgs {
		d.buf = append(d.buf, msgs[i].JSON...)
		d.buf = append(d.buf, '\n')
	}
	if len(d.buf) == 0 {
		return nil
	}
	if _, err := d.w.Write(d.buf); err != nil {
		return fmt.Errorf("writing to stdout: %w", err)
	}
	if cap(d.buf) > 16<<20 {
		d.buf = nil
	}
	return nil
}

// Close marks the destination closed; standard output itself stays open.
func (d *Stdout) Close(context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closed = true
	return nil
}
