// Package file is the file destination: it appends each message as one JSON line to a
// local file, and a Write is acknowledged once its lines are fsynced.
//
// Sample config:
//
//	destinations:
//	  - type: file
//	    path: out/users.jsonl   # relative to the config file; parent directories are created
//	    batch_size: 1000        # lines per Write (and per fsync)
package file

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/destinations"
	"github.com/backflowhq/backflow/mapper"
)

var (
	_ destinations.Destination = (*File)(nil)
	_ destinations.Checker     = (*File)(nil)
)

// File appends JSON lines to one file. Concurrent Writes are serialised by a mutex, so
// the lines of one Write are contiguous.
type File struct {
	path string

	mu     sync.Mutex
	f      *os.File // opened by the first Write, so that `backflow check` creates nothing
	size   int64    // the file's size after the last good Write
	buf    []byte
	closed bool
}

// Type is the file destination's type name in the configuration.
const Type = "file"

// Options are the file destination's own configuration keys.
type Options struct {
	// Path is the file appended to: absolute once prepared (a relative path is resolved
	// against the configuration file's directory).
	Path string `mapstructure:"path"`
}

// Prepare resolves the path and checks that no other destination writes the same file.
func (o *Options) Prepare(c *config.OptionsCheck) {
	if !c.Required("path", Type, o.Path) {
		return
	}
	o.Path = c.LocalPath(o.Path)
	c.Claim("path", o.Path)
}

// Kind is the file destination's kind: one writer (appends are serialised anyway),
// 5,000 lines per fsync.
func Kind() destinations.Kind {
	return destinations.Kind{
		Type: Type,
		Kind: config.Kind{MaxInFlight: 1, BatchSize: 5000, NewOptions: func() config.Options { return &Options{} }},
		New:  New,
	}
}

// New is the file destination's Factory.
func New(_ context.Context, cfg config.Destination, _ destinations.Env) (destinations.Destination, error) {
	o, err := destinations.OptionsOf[*Options](cfg)
	if err != nil {
		return nil, err
	}
	if o.Path == "" {
		return nil, errors.New("path is required")
	}
	return &File{path: o.Path}, nil
}

// Write appends msgs, one line each, and fsyncs before returning: nil means every line is
// on disk. A message whose JSON holds a raw newline (it would break the line format) is
// refused and reported in a *destinations.BatchError; the others are written. A failed
// write is truncated away, so a retry does not leave half a line behind.
func (d *File) Write(ctx context.Context, msgs []mapper.Message) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return destinations.ErrClosed
	}
	if err := ctx.Err(); err != nil { // it may have ended while we waited for the lock
		return err
	}
	if err := d.open(); err != nil {
		return err
	}
	var failed []destinations.Failure
	d.buf = d.buf[:0]
	for i := range msgs {
		j := msgs[i].JSON
		if bytes.IndexByte(j, '\n') >= 0 || len(j) == 0 {
			failed = append(failed, destinations.Failure{Index: i,
				Err: &destinations.PermanentError{Err: errors.New("message is empty or holds a raw newline: not one JSON line")}})
			continue
		}
		d.buf = append(d.buf, j...)
		d.buf = append(d.buf, '\n')
	}
	if len(d.buf) > 0 {
		if _, err := d.f.Write(d.buf); err != nil {
			return d.undo(fmt.Errorf("appending to %s: %w", d.path, err))
		}
		if err := d.f.Sync(); err != nil {
			return d.undo(fmt.Errorf("syncing %s: %w", d.path, err))
		}
		d.size += int64(len(d.buf))
	}
	if cap(d.buf) > 16<<20 {
		d.buf = nil // do not keep a huge buffer after a huge batch
	}
	if len(failed) > 0 {
		return &destinations.BatchError{Failed: failed}
	}
	return nil
}

// undo truncates the file back to its last good size after a failed write.
func (d *File) undo(err error) error {
	if terr := d.f.Truncate(d.size); terr != nil {
		return errors.Join(err, fmt.Errorf("truncating %s after a failed write: %w", d.path, terr))
	}
	return err
}

func (d *File) open() error {
	if d.f != nil {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(d.path), 0o755); err != nil {
		return fmt.Errorf("creating the directory of %s: %w", d.path, err)
	}
	f, err := os.OpenFile(d.path, os.O_RDWR|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("opening %s: %w", d.path, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("opening %s: %w", d.path, err)
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return fmt.Errorf("%s is not a regular file", d.path)
	}
	size, err := cutTornLine(f, st.Size())
	if err != nil {
		f.Close()
		return fmt.Errorf("repairing %s: %w", d.path, err)
	}
	d.f, d.size = f, size
	return nil
}

// cutTornLine truncates a file that does not end in a newline back to just after its last
// one. A process killed in the middle of a write leaves half a line; that batch was never
// acknowledged, so the next run sends it again, and appending to the half line would
// glue two messages into invalid JSON.
func cutTornLine(f *os.File, size int64) (int64, error) {
	if size == 0 {
		return 0, nil
	}
	buf := make([]byte, 64<<10)
	end := size
	for end > 0 {
		n := int64(len(buf))
		if n > end {
			n = end
		}
		if _, err := f.ReadAt(buf[:n], end-n); err != nil {
			return 0, err
		}
		if end == size && buf[n-1] == '\n' {
			return size, nil // the common case: the file ends with a whole line
		}
		for i := n - 1; i >= 0; i-- {
			if buf[i] == '\n' {
				keep := end - n + i + 1
				return keep, truncateSync(f, keep)
			}
		}
		end -= n
	}
	return 0, truncateSync(f, 0)
}

func truncateSync(f *os.File, size int64) error {
	if err := f.Truncate(size); err != nil {
		return err
	}
	return f.Sync()
}

// Close closes the file. Every Write already fsynced its lines, so nothing is pending.
func (d *File) Close(context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	if d.f == nil {
		return nil
	}
	if err := d.f.Close(); err != nil {
		return fmt.Errorf("closing %s: %w", d.path, err)
	}
	return nil
}

// Check makes sure the file can be appended to without creating it: the file, if it
// exists, is a writable regular file; otherwise the nearest existing parent directory
// accepts a new file.
func (d *File) Check(context.Context) error {
	st, err := os.Stat(d.path)
	switch {
	case err == nil && !st.Mode().IsRegular():
		return fmt.Errorf("%s is not a regular file", d.path)
	case err == nil:
		f, err := os.OpenFile(d.path, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return fmt.Errorf("%s is not writable: %w", d.path, err)
		}
		return f.Close()
	case !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("checking %s: %w", d.path, err)
	}
	dir := filepath.Dir(d.path)
	for {
		st, err := os.Stat(dir)
		if err == nil {
			if !st.IsDir() {
				return fmt.Errorf("cannot create %s: %s is not a directory", d.path, dir)
			}
			break
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("checking %s: %w", dir, err)
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return fmt.Errorf("cannot create %s: no existing parent directory", d.path)
		}
		dir = parent
	}
	probe, err := os.CreateTemp(dir, ".backflow-check-*")
	if err != nil {
		return fmt.Errorf("cannot create %s: directory %s is not writable: %w", d.path, dir, err)
	}
	probe.Close()
	return os.Remove(probe.Name())
}
