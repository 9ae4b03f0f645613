package pipeline

import (
	"encoding/json"
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
// no file (a dry run) it only counts.
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
		w.err = err
		return
	}
	w.buf = append(w.buf[:0], b...)
	w.buf = append(w.buf, '\n')
	if _, err := w.file.Write(w.buf); err != nil && w.err == nil {
		w.err = err
	}
}
