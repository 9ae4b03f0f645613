package s3

import (
	"io"
	"sync"

	"github.com/klauspost/compress/gzip"
)

// gzipLevel is the compression level of gzip objects. On the bench's JSON lines, level 2
// of klauspost/compress compresses 1.6–1.7 times as many bytes per CPU-second as its
// default (5), into objects 5% larger (16.8% of the input instead of 16.0%); level 1 is
// no faster and larger still.
const gzipLevel = 2

// newGzipWriter compresses into w at gzipLevel. klauspost/compress (already used by
// arrow-go) produces standard gzip about twice as fast as compress/gzip.
func newGzipWriter(w io.Writer) io.WriteCloser {
	zw, err := gzip.NewWriterLevel(w, gzipLevel)
	if err != nil {
		panic(err) // a constant, valid level
	}
	return zw
}

// Compression runs on a goroutine of its own, fed chunks of gzipChunk bytes, so that a
// write returns once its messages are encoded, not compressed: the caller (the pipeline's
// mapping) and gzip, the costliest step, use two cores. The queue bounds memory to
// gzipQueue+2 chunks.
const (
	gzipChunk = 512 << 10
	gzipQueue = 2
)

// asyncGzip is an io.WriteCloser that compresses what is written into sink on its own
// goroutine. Write copies into the chunk being filled and hands full chunks over; Close
// hands over the rest, waits until everything is compressed and the gzip trailer
// written, and returns the first error. Only the goroutine writes to sink until Close
// returns. Write and Close are called by one goroutine at a time.
type asyncGzip struct {
	gz   io.WriteCloser
	buf  []byte      // the chunk being filled
	full chan []byte // chunks to compress, in order
	free chan []byte // compressed chunks, for reuse
	done chan struct{}

	closed bool

	mu  sync.Mutex // guards err, set by the goroutine
	err error
}

func newAsyncGzip(sink io.Writer) *asyncGzip {
	a := &asyncGzip{
		gz:   newGzipWriter(sink),
		full: make(chan []byte, gzipQueue),
		// Room for every chunk that can exist (queued, compressing, filling): the
		// goroutine never waits to give one back.
		free: make(chan []byte, gzipQueue+2),
		done: make(chan struct{}),
	}
	go a.run()
	return a
}

func (a *asyncGzip) run() {
	defer close(a.done)
	for b := range a.full {
		// After a failure the chunks are still taken, so that Write never waits on a
		// goroutine that stopped.
		if a.failed() == nil {
			if _, err := a.gz.Write(b); err != nil {
				a.fail(err)
			}
		}
		a.free <- b[:0]
	}
	if err := a.gz.Close(); err != nil {
		a.fail(err)
	}
}

func (a *asyncGzip) failed() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.err
}

func (a *asyncGzip) fail(err error) {
	a.mu.Lock()
	if a.err == nil {
		a.err = err
	}
	a.mu.Unlock()
}

func (a *asyncGzip) Write(p []byte) (int, error) {
	if a.closed {
		return 0, io.ErrClosedPipe
	}
	n := 0
	for len(p) > 0 {
		if err := a.failed(); err != nil {
			return n, err
		}
		if a.buf == nil {
			select {
			case b := <-a.free:
				a.buf = b
			default:
				a.buf = make([]byte, 0, gzipChunk)
			}
		}
		c := copy(a.buf[len(a.buf):cap(a.buf)], p)
		a.buf = a.buf[:len(a.buf)+c]
		p = p[c:]
		n += c
		if len(a.buf) == cap(a.buf) {
			a.full <- a.buf
			a.buf = nil
		}
	}
	return n, nil
}

// Close compresses what remains, writes the trailer and stops the goroutine. A second
// Close returns the same error.
func (a *asyncGzip) Close() error {
	if !a.closed {
		a.closed = true
		if len(a.buf) > 0 {
			a.full <- a.buf
		}
		a.buf = nil
		close(a.full)
		<-a.done
	}
	return a.failed()
}
