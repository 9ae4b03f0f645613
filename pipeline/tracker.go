package pipeline

// rangeTracker turns acknowledgements of row ranges, which arrive in any order, into the
// number of leading rows of a file that are acknowledged (the watermark a checkpoint
// records). Ranges handed to it partition [start, rows) with no overlap.
// It is owned by one goroutine.
type rangeTracker struct {
	watermark int64
	pending   map[int64]int64 // start -> end of acknowledged ranges beyond the watermark
}

func newRangeTracker(start int64) *rangeTracker {
	return &rangeTracker{watermark: start, pending: map[int64]int64{}}
}

// ack records [start, end) as acknowledged and returns the new watermark.
func (t *rangeTracker) ack(start, end int64) int64 {
	if end <= start {
		return t.watermark
	}
	if start != t.watermark {
		t.pending[start] = end
		return t.watermark
	}
	t.watermark = end
	for {
		next, ok := t.pending[t.watermark]
		if !ok {
			break
		}
		delete(t.pending, t.watermark)
		t.watermark = next
	}
	return t.watermark
}
