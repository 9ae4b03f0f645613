package s3

import (
	"bufio"
	"errors"
	"io"

	"github.com/backflowhq/backflow/mapper"
)

// encoder turns messages into the bytes of one object. An encoder is made for each
// object and used by one goroutine at a time.
type encoder interface {
	// write encodes msgs in order. It returns how many it consumed: fewer than
	// len(msgs) when msgs[n] does not fit the object's columns (CSV, Parquet), and the
	// caller then starts a new object for the rest. A message whose traits/properties
	// cannot be read is left out and passed to reject. An error leaves the object
	// unusable.
	write(msgs []mapper.Message, reject func(i int, err error)) (n int, err error)
	// finish writes what remains buffered and the format's trailer.
	finish() error
	// release frees the encoder's resources without finishing the object (it is being
	// aborted; the sink drops writes).
	release()
}

// stream is the byte path below an encoder: a buffer, then gzip when asked (on its own
// goroutine, see asyncGzip), then the upload. Writing through a buffer keeps the calls
// into gzip and the upload few and large.
type stream struct {
	bw *bufio.Writer
	gz io.WriteCloser // nil without compression
}

const streamBuffer = 64 << 10

func newStream(sink io.Writer, gzip bool) *stream {
	s := &stream{}
	if gzip {
		s.gz = newAsyncGzip(sink)
		s.bw = bufio.NewWriterSize(s.gz, streamBuffer)
	} else {
		s.bw = bufio.NewWriterSize(sink, streamBuffer)
	}
	return s
}

func (s *stream) finish() error {
	if err := s.bw.Flush(); err != nil {
		return err
	}
	if s.gz != nil {
		return s.gz.Close()
	}
	return nil
}

func (s *stream) release() {
	// The sink drops writes once aborted; finishing stops the gzip goroutine and
	// releases its state cleanly.
	_ = s.finish()
}

// jsonlEncoder writes each message's JSON followed by a newline.
type jsonlEncoder struct{ s *stream }

func (e *jsonlEncoder) write(msgs []mapper.Message, _ func(int, error)) (int, error) {
	for i := range msgs {
		if _, err := e.s.bw.Write(msgs[i].JSON); err != nil {
			return i, err
		}
		if err := e.s.bw.WriteByte('\n'); err != nil {
			return i, err
		}
	}
	return len(msgs), nil
}

func (e *jsonlEncoder) finish() error { return e.s.finish() }
func (e *jsonlEncoder) release()      { e.s.release() }

// csvEncoder writes a header row, then one row a message, with standard CSV quoting
// (RFC 4180): a field is quoted when it holds the delimiter, a quote, a line break or
// leading/trailing spaces, or always with quote_all. A null (or absent) value is an
// empty unquoted field, so with quote_all a null ("") differs from an empty string ("\"\"").
type csvEncoder struct {
	s        *stream
	cols     *columns
	f        *flattener
	delim    byte
	quoteAll bool
	row      row
	line     []byte
}

func newCSVEncoder(s *stream, cols *columns, f *flattener, delim byte, quoteAll bool) (encoder, error) {
	e := &csvEncoder{s: s, cols: cols, f: f, delim: delim, quoteAll: quoteAll}
	for i, name := range cols.names {
		if i > 0 {
			e.line = append(e.line, delim)
		}
		e.line = appendCSVField(e.line, name, delim, quoteAll)
	}
	e.line = append(e.line, '\n')
	if _, err := s.bw.Write(e.line); err != nil {
		s.release()
		return nil, err
	}
	return e, nil
}

func (e *csvEncoder) write(msgs []mapper.Message, reject func(int, error)) (int, error) {
	defer e.row.forget()
	for i := range msgs {
		if err := e.cols.fill(e.f, &msgs[i], &e.row); err != nil {
			if isMisfit(err) {
				return i, nil
			}
			reject(i, err)
			continue
		}
		e.line = e.line[:0]
		for c := range e.cols.names {
			if c > 0 {
				e.line = append(e.line, e.delim)
			}
			switch {
			case c == 5:
				if len(e.row.ts) > 0 {
					e.line = appendCSVField(e.line, e.row.ts, e.delim, e.quoteAll)
				}
			case c < numFieldColumns:
				if v := e.row.field(c); v != "" {
					e.line = appendCSVField(e.line, v, e.delim, e.quoteAll)
				}
			case e.row.set[c]:
				e.line = appendCSVField(e.line, e.row.vals[c].raw, e.delim, e.quoteAll)
			}
		}
		e.line = append(e.line, '\n')
		if _, err := e.s.bw.Write(e.line); err != nil {
			return i, err
		}
	}
	return len(msgs), nil
}

// isMisfit tells whether an error of columns.fill means the message does not fit the
// object's columns; any other error says why its body cannot be read.
func isMisfit(err error) bool {
	var mf errMisfit
	return errors.As(err, &mf)
}

// appendCSVField appends v to dst, quoted when it must be (or always with quoteAll).
func appendCSVField[T string | []byte](dst []byte, v T, delim byte, quoteAll bool) []byte {
	if !quoteAll && !csvNeedsQuotes(v, delim) {
		return append(dst, v...)
	}
	dst = append(dst, '"')
	for i := 0; i < len(v); i++ {
		if v[i] == '"' {
			dst = append(dst, '"')
		}
		dst = append(dst, v[i])
	}
	return append(dst, '"')
}

// csvNeedsQuotes tells whether v must be quoted: it holds the delimiter, a quote or a
// line break, or starts or ends with a space or tab (which readers may trim).
func csvNeedsQuotes[T string | []byte](v T, delim byte) bool {
	n := len(v)
	if n == 0 {
		return false
	}
	if v[0] == ' ' || v[0] == '\t' || v[n-1] == ' ' || v[n-1] == '\t' {
		return true
	}
	for i := 0; i < n; i++ {
		switch v[i] {
		case delim, '"', '\n', '\r':
			return true
		}
	}
	return false
}

func (e *csvEncoder) finish() error { return e.s.finish() }
func (e *csvEncoder) release()      { e.s.release() }
