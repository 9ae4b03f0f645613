package pipeline

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"

	"github.com/backflowhq/backflow/state"
)

// rejectLine is one line of the rejects file (SPEC.md).
type rejectLine struct {
	File        string          `json:"file"`
	Row         int64           `json:"row"`
	Destination string          `json:"destination,omitempty"`
	Reason      string          `json:"reason"`
	Message     json.RawMessage `json:"message,omitempty"`
}

// rejectsWriter serializes lines from many goroutines into the run's rejects file. With
// no file (a dry run) it drops them. A line that could not be written makes every later
// flush fail: a checkpoint must never count a reject that is not in the file.
type rejectsWriter struct {
	mu   sync.Mutex
	file state.RejectsFile
	buf  []byte
	err  error
}

func (w *rejectsWriter) write(l rejectLine) {
	if w.file == nil {
		return
	}
	if l.Message != nil && !json.Valid(l.Message) {
		l.Message = nil
	}
	b, err := json.Marshal(l)
	w.mu.Lock()
	defer w.mu.Unlock()
	if err != nil {
		if w.err == nil {
			w.err = fmt.Errorf("encoding a rejected row of %s: %w", l.File, err)
		}
		return
	}
	w.buf = append(w.buf[:0], b...)
	w.buf = append(w.buf, '\n')
	if _, err := w.file.Write(w.buf); err != nil && w.err == nil {
		w.err = err
	}
}

// flush makes every line written so far durable, or says why it cannot.
func (w *rejectsWriter) flush(ctx context.Context) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return w.err
	}
	if w.file == nil {
		return nil
	}
	if err := w.file.Flush(ctx); err != nil {
		w.err = err
		return err
	}
	return nil
}

func (w *rejectsWriter) close(ctx context.Context) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.file == nil {
		return w.err
	}
	err := w.file.Close(ctx)
	if w.err != nil {
		return w.err
	}
	return err
}

func (w *rejectsWriter) location() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.file == nil {
		return ""
	}
	return w.file.Location()
}
