package state

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"sync"
)

const rejectsBufferSize = 64 << 10

// localRejects appends to <state>/rejects/<sync>/<run id>.jsonl, created on the first
// Write. Writes are buffered; Flush makes them durable. Each Write lands whole, so lines
// written by different goroutines never interleave.
type localRejects struct {
	dir, path string

	mu     sync.Mutex
	f      *os.File
	bw     *bufio.Writer
	closed bool
}

func (r *localRejects) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return 0, fmt.Errorf("rejects file %s is closed", r.path)
	}
	if r.f == nil {
		if err := mkdirAll(r.dir); err != nil {
			return 0, fmt.Errorf("creating rejects directory: %w", err)
		}
		f, err := os.OpenFile(r.path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, filePerm)
		if err != nil {
			return 0, fmt.Errorf("creating rejects file: %w", err)
		}
		// The new entry in the directory must survive a crash as well as the lines.
		if err := syncDir(r.dir); err != nil {
			_ = f.Close()
			return 0, fmt.Errorf("syncing rejects directory %s: %w", r.dir, err)
		}
		r.f, r.bw = f, bufio.NewWriterSize(f, rejectsBufferSize)
	}
	n, err := r.bw.Write(p)
	if err != nil {
		return n, fmt.Errorf("writing rejects file %s: %w", r.path, err)
	}
	return n, nil
}

func (r *localRejects) Flush(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.flush()
}

func (r *localRejects) flush() error {
	if r.f == nil {
		return nil
	}
	if err := r.bw.Flush(); err != nil {
		return fmt.Errorf("writing rejects file %s: %w", r.path, err)
	}
	if err := r.f.Sync(); err != nil {
		return fmt.Errorf("syncing rejects file %s: %w", r.path, err)
	}
	return nil
}

func (r *localRejects) Close(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	r.closed = true
	if r.f == nil {
		return nil
	}
	err := r.flush()
	if cerr := r.f.Close(); cerr != nil && err == nil {
		err = fmt.Errorf("closing rejects file %s: %w", r.path, cerr)
	}
	return err
}

func (r *localRejects) Location() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.f == nil {
		return ""
	}
	return r.path
}

// spooledRejects collects the lines of an s3:// rejects file in a local temporary file
// and uploads the whole of it on every Flush (S3 objects cannot be appended to). A run
// rejects few rows, so re-sending the file is cheap next to keeping it in memory.
type spooledRejects struct {
	url    string
	upload func(ctx context.Context, f *os.File, size int64) error

	mu       sync.Mutex
	f        *os.File
	bw       *bufio.Writer
	written  int64 // bytes written so far
	uploaded int64 // bytes in the object
	closed   bool
}

func (r *spooledRejects) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return 0, fmt.Errorf("rejects file %s is closed", r.url)
	}
	if r.f == nil {
		f, err := os.CreateTemp("", "backflow-rejects-*.jsonl")
		if err != nil {
			return 0, fmt.Errorf("creating the local spool of rejects file %s: %w", r.url, err)
		}
		r.f, r.bw = f, bufio.NewWriterSize(f, rejectsBufferSize)
	}
	n, err := r.bw.Write(p)
	r.written += int64(n)
	if err != nil {
		return n, fmt.Errorf("spooling rejects file %s to %s: %w", r.url, r.f.Name(), err)
	}
	return n, nil
}

func (r *spooledRejects) Flush(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.flush(ctx)
}

func (r *spooledRejects) flush(ctx context.Context) error {
	if r.f == nil || r.written == r.uploaded {
		return nil
	}
	if err := r.bw.Flush(); err != nil {
		return fmt.Errorf("spooling rejects file %s to %s: %w", r.url, r.f.Name(), err)
	}
	size := r.written
	if err := r.upload(ctx, r.f, size); err != nil {
		return err
	}
	r.uploaded = size
	return nil
}

func (r *spooledRejects) Close(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	r.closed = true
	if r.f == nil {
		return nil
	}
	name := r.f.Name()
	if err := r.flush(ctx); err != nil {
		// Keep the spool: it is the only copy of the rejected rows.
		_ = r.f.Close()
		return fmt.Errorf("%w (the rejected rows are kept in %s)", err, name)
	}
	if err := r.f.Close(); err != nil {
		return fmt.Errorf("closing spool %s: %w", name, err)
	}
	if err := os.Remove(name); err != nil {
		return fmt.Errorf("removing spool %s: %w", name, err)
	}
	return nil
}

func (r *spooledRejects) Location() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.f == nil {
		return ""
	}
	return r.url
}
