package reader

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/apache/arrow-go/v18/parquet"
	"github.com/apache/arrow-go/v18/parquet/file"
	"github.com/apache/arrow-go/v18/parquet/metadata"
	"github.com/apache/arrow-go/v18/parquet/pqarrow"

	"github.com/backflowhq/backflow/internal/arrowmem"
)

const (
	// DefaultBatchSize is how many rows a record batch holds unless FileOptions says
	// otherwise. pqarrow reads a whole row group as one batch when its BatchSize is 0,
	// which would tie memory to the row group's size: we never let that happen.
	DefaultBatchSize int64 = 4096
	// DefaultBufferSize is the buffered stream each column chunk is read through. Over
	// S3 every refill is one ranged GET, so megabytes, not arrow-go's 16 KiB default.
	DefaultBufferSize int64 = 4 << 20
	// MinBufferSize is the smallest stream buffer a MemoryBudget shrinks it to.
	MinBufferSize int64 = 256 << 10

	// pageMemory is what RowGroupMemory counts per column for its pages, its dictionary
	// and the dictionary's decoded values (each bounded by the writer's page sizes, 1 MiB
	// by default in arrow-go, parquet-mr and DuckDB), when the column chunk is larger.
	pageMemory int64 = 2 << 20

	// footerProbe is how many bytes of the end of a file OpenFile reads at once: the
	// 8-byte trailer and, for nearly every file, the whole footer, so that opening a
	// file over S3 costs one GET instead of two.
	footerProbe = 64 << 10
)

// ErrEncrypted is wrapped by the error OpenFile returns for a file that uses Parquet
// modular encryption, which backflow does not read.
var ErrEncrypted = errors.New("encrypted Parquet files are not supported (Parquet modular encryption); export the data unencrypted")

// FileOptions tune how a Parquet file is read. The zero value is usable.
type FileOptions struct {
	// BatchSize is the most rows a record batch holds; 0 or less means DefaultBatchSize.
	BatchSize int64
	// BufferSize is the buffered stream size per column chunk; 0 or less means
	// DefaultBufferSize. A column chunk smaller than this is buffered whole.
	BufferSize int64
	// MemoryBudget, when positive, is what reading one row group should stay near: the
	// stream buffer of each column shrinks to a quarter of it shared by the file's
	// columns (never below MinBufferSize nor above BufferSize), so that a wide table's
	// buffers do not multiply with its columns.
	MemoryBudget int64
	// Allocator allocates Arrow memory; nil means an arrowmem.Pool of the file's own. Files
	// read one after the other share a pool best: pass one.
	Allocator memory.Allocator
}

// ParquetError is a file that cannot be read as Parquet: it is not Parquet, its
// footer or data are corrupt, it is encrypted, or arrow-go failed on it. It is
// permanent — reading the same bytes again fails the same way — so the file is
// rejected and the run goes on. Errors of the Blob itself (network, not found) are
// never ParquetErrors: they are returned wrapped as they are.
type ParquetError struct {
	Key      string
	RowGroup int // -1 when the error is not about one row group
	Err      error
}

func (e *ParquetError) Error() string {
	if e.RowGroup >= 0 {
		return fmt.Sprintf("%s: row group %d: %v", e.Key, e.RowGroup, e.Err)
	}
	return fmt.Sprintf("%s: %v", e.Key, e.Err)
}

func (e *ParquetError) Unwrap() error { return e.Err }

// RecordReader yields the record batches of one row group, in order, each of at most
// the file's batch size rows. It is used by one goroutine at a time.
type RecordReader interface {
	// Next advances to the next batch; false at the end of the row group or on error
	// (then Err says which). The previous batch is released by Next.
	Next() bool
	// RecordBatch is the current batch, valid until the next call to Next or Release;
	// Retain it to keep it longer.
	RecordBatch() arrow.RecordBatch
	// Err is the error that stopped Next, nil at a clean end. A row group that holds
	// fewer or more rows than its footer says is an error.
	Err() error
	// Schema is the Arrow schema of every batch.
	Schema() *arrow.Schema
	// Release frees the reader and its current batch. Safe to call more than once.
	Release()
}

// File is one Parquet file opened for reading. Its methods may be called from several
// goroutines; each RecordReader it returns belongs to one goroutine. No method panics:
// arrow-go's panics on corrupt input come back as *ParquetError.
type File struct {
	obj       Object
	blob      *recordingBlob
	pf        *file.Reader
	fr        *pqarrow.FileReader
	mem       memory.Allocator
	batchSize int64
	bufSize   int64 // the stream buffer of each column chunk
	schema    *arrow.Schema
	rowCounts []int64
	numRows   int64
	closeOnce sync.Once
	closeErr  error
}

// OpenFile reads the footer of obj through blob and prepares reading it as Arrow
// records. It takes ownership of blob: File.Close closes it, and OpenFile closes it
// when it fails. Errors name obj.Key; a file that is not readable Parquet (corrupt,
// truncated, encrypted, not Parquet at all) gives a *ParquetError.
func OpenFile(ctx context.Context, blob Blob, obj Object, opts FileOptions) (f *File, err error) {
	rb := &recordingBlob{Blob: blob}
	defer func() {
		if p := recover(); p != nil {
			err = corrupt(obj.Key, -1, fmt.Errorf("unreadable Parquet footer (parquet reader panicked: %v)", p))
		}
		if err != nil {
			_ = blob.Close()
			f = nil
		}
	}()
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("opening %s: %w", obj.Key, err)
	}

	if opts.BatchSize <= 0 {
		opts.BatchSize = DefaultBatchSize
	}
	if opts.BufferSize <= 0 {
		opts.BufferSize = DefaultBufferSize
	}
	if opts.Allocator == nil {
		opts.Allocator = arrowmem.NewPool(0)
	}

	size := blob.Size()
	// The smallest Parquet file is "PAR1" + footer + 4-byte length + "PAR1".
	if size < 12 {
		return nil, corrupt(obj.Key, -1, fmt.Errorf("not a Parquet file: %d bytes are too few for one", size))
	}
	tailLen := min(size, footerProbe)
	tail := make([]byte, tailLen)
	if n, err := blob.ReadAt(tail, size-tailLen); n != len(tail) {
		if err == nil || errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("reading the footer of %s: %w", obj.Key, err)
	}
	switch magic := tail[len(tail)-4:]; {
	case bytes.Equal(magic, []byte("PARE")):
		return nil, corrupt(obj.Key, -1, ErrEncrypted)
	case !bytes.Equal(magic, []byte("PAR1")):
		return nil, corrupt(obj.Key, -1, errors.New("not a Parquet file (it does not end with the PAR1 magic bytes)"))
	}
	rb.tail, rb.tailOff = tail, size-tailLen

	props := parquet.NewReaderProperties(opts.Allocator)
	props.BufferedStreamEnabled = true
	props.BufferSize = opts.BufferSize
	pf, err := file.NewParquetReader(io.NewSectionReader(rb, 0, size), file.WithReadProps(props))
	if err != nil {
		return nil, rb.wrap(obj.Key, -1, "footer", err)
	}
	// The footer is parsed: later reads are of pages, never of the cached tail.
	rb.tail = nil

	md := pf.MetaData()
	if md.IsSetEncryptionAlgorithm() {
		return nil, corrupt(obj.Key, -1, ErrEncrypted)
	}
	counts := make([]int64, md.NumRowGroups())
	var total int64
	for i := range counts {
		n := md.RowGroup(i).NumRows()
		if n < 0 {
			return nil, corrupt(obj.Key, i, fmt.Errorf("corrupt footer: %d rows", n))
		}
		counts[i] = n
		total += n
		if total < 0 {
			return nil, corrupt(obj.Key, i, errors.New("corrupt footer: row count overflows"))
		}
	}

	fr, err := pqarrow.NewFileReader(pf, pqarrow.ArrowReadProperties{BatchSize: opts.BatchSize, Parallel: false}, opts.Allocator)
	if err != nil {
		return nil, corrupt(obj.Key, -1, fmt.Errorf("unsupported Parquet schema: %w", err))
	}
	sc, err := fr.Schema()
	if err != nil {
		return nil, corrupt(obj.Key, -1, fmt.Errorf("unsupported Parquet schema: %w", err))
	}
	if md.Schema.NumColumns() == 0 {
		return nil, corrupt(obj.Key, -1, errors.New("the file has no columns"))
	}
	if opts.MemoryBudget > 0 {
		// arrow-go reads props.BufferSize whenever it opens a column chunk's stream.
		per := opts.MemoryBudget / 4 / int64(md.Schema.NumColumns())
		props.BufferSize = min(opts.BufferSize, max(per, MinBufferSize))
	}
	return &File{
		obj:       obj,
		blob:      rb,
		pf:        pf,
		fr:        fr,
		mem:       opts.Allocator,
		batchSize: opts.BatchSize,
		bufSize:   props.BufferSize,
		schema:    sc,
		rowCounts: counts,
		numRows:   total,
	}, nil
}

// Object is the object the file was opened from.
func (f *File) Object() Object { return f.obj }

// Metadata is the parsed footer.
func (f *File) Metadata() *metadata.FileMetaData { return f.pf.MetaData() }

// NumRows is the number of rows of the file: the sum of its row groups' rows.
func (f *File) NumRows() int64 { return f.numRows }

// NumRowGroups is the number of row groups of the file.
func (f *File) NumRowGroups() int { return len(f.rowCounts) }

// RowGroupRows is the number of rows the footer gives row group i; 0 when there is no
// such row group.
func (f *File) RowGroupRows(i int) int64 {
	if i < 0 || i >= len(f.rowCounts) {
		return 0
	}
	return f.rowCounts[i]
}

// BatchSize is the most rows a record batch of this file holds.
func (f *File) BatchSize() int64 { return f.batchSize }

// BufferSize is the stream buffer of each column chunk of this file.
func (f *File) BufferSize() int64 { return f.bufSize }

// RowGroupMemory estimates the memory reading row group i takes, from the footer: per
// column chunk, its stream buffer (the chunk's compressed bytes, up to the buffer size)
// and its pages, dictionary and decoded dictionary (the chunk's uncompressed bytes, up to
// 2 MiB). The record batches themselves are bounded by BatchSize and counted by nobody.
func (f *File) RowGroupMemory(i int) int64 {
	md := f.pf.MetaData()
	if i < 0 || i >= md.NumRowGroups() {
		return 0
	}
	rg := md.RowGroup(i)
	var total int64
	for c := range rg.NumColumns() {
		cc, err := rg.ColumnChunk(c)
		if err != nil {
			continue
		}
		total += min(max(cc.TotalCompressedSize(), 0), f.bufSize) + min(max(cc.TotalUncompressedSize(), 0), pageMemory)
	}
	return total
}

// ArrowSchema is the Arrow schema the file's records have: one field per top-level
// Parquet column, in order. It is computed once, by OpenFile.
func (f *File) ArrowSchema() (*arrow.Schema, error) { return f.schema, nil }

// ReadRowGroup returns a reader of row group i's records, each of at most BatchSize
// rows. ctx is checked before every batch; a batch that is being decoded is not
// interrupted (it is bounded by BatchSize rows and by arrow-go's page size limits).
// Several row groups may be read at once from different goroutines.
func (f *File) ReadRowGroup(ctx context.Context, i int) (rr RecordReader, err error) {
	if i < 0 || i >= len(f.rowCounts) {
		return nil, fmt.Errorf("%s: no row group %d (the file has %d)", f.obj.Key, i, len(f.rowCounts))
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("reading %s: row group %d: %w", f.obj.Key, i, err)
	}
	r := &rowGroupReader{f: f, ctx: ctx, rg: i, want: f.rowCounts[i], schema: f.schema}
	if r.want == 0 {
		// pqarrow's batch size for an empty row group would be 0: nothing to read.
		return r, nil
	}
	defer func() {
		if p := recover(); p != nil {
			err = corrupt(f.obj.Key, i, fmt.Errorf("unreadable data (parquet reader panicked: %v)", p))
		}
	}()
	inner, err := f.fr.GetRecordReader(ctx, nil, []int{i})
	if err != nil {
		return nil, f.blob.wrap(f.obj.Key, i, "data", err)
	}
	r.inner = inner
	r.schema = inner.Schema()
	return r, nil
}

// ReadFirstRows returns the first n rows of the file (fewer when the file has fewer),
// reading only the row groups that hold them. The caller releases the batch.
func (f *File) ReadFirstRows(ctx context.Context, n int64) (out arrow.RecordBatch, err error) {
	var parts []arrow.RecordBatch
	defer func() {
		for _, p := range parts {
			p.Release()
		}
		if p := recover(); p != nil {
			if out != nil {
				out.Release()
				out = nil
			}
			err = corrupt(f.obj.Key, -1, fmt.Errorf("unreadable data (parquet reader panicked: %v)", p))
		}
	}()
	need := max(n, 0)
	for rg := 0; rg < len(f.rowCounts) && need > 0; rg++ {
		if f.rowCounts[rg] == 0 {
			continue
		}
		rr, err := f.ReadRowGroup(ctx, rg)
		if err != nil {
			return nil, err
		}
		for need > 0 && rr.Next() {
			rec := rr.RecordBatch()
			take := min(rec.NumRows(), need)
			parts = append(parts, rec.NewSlice(0, take))
			need -= take
		}
		err = rr.Err()
		rr.Release()
		if err != nil {
			return nil, err
		}
	}
	return f.concat(parts)
}

// concat joins record batches of the file's schema into one; it does not release them.
func (f *File) concat(parts []arrow.RecordBatch) (arrow.RecordBatch, error) {
	if len(parts) == 1 {
		parts[0].Retain()
		return parts[0], nil
	}
	sc := f.schema
	if len(parts) > 0 {
		sc = parts[0].Schema()
	}
	cols := make([]arrow.Array, len(sc.Fields()))
	defer func() {
		for _, c := range cols {
			if c != nil {
				c.Release()
			}
		}
	}()
	var rows int64
	for _, p := range parts {
		rows += p.NumRows()
	}
	for i, field := range sc.Fields() {
		if len(parts) == 0 {
			cols[i] = array.MakeArrayOfNull(f.mem, field.Type, 0)
			continue
		}
		chunks := make([]arrow.Array, len(parts))
		for j, p := range parts {
			chunks[j] = p.Column(i)
		}
		c, err := array.Concatenate(chunks, f.mem)
		if err != nil {
			return nil, corrupt(f.obj.Key, -1, fmt.Errorf("column %q: %w", field.Name, err))
		}
		cols[i] = c
	}
	return array.NewRecordBatch(sc, cols, rows), nil
}

// Close releases the file and closes its blob. Safe to call more than once.
func (f *File) Close() error {
	f.closeOnce.Do(func() {
		// file.Reader.Close would only close an io.Closer source: ours is a SectionReader.
		f.closeErr = f.blob.Close()
		if f.closeErr != nil {
			f.closeErr = fmt.Errorf("closing %s: %w", f.obj.Key, f.closeErr)
		}
	})
	return f.closeErr
}

// rowGroupReader wraps pqarrow's record reader: it checks ctx between batches,
// recovers arrow-go's panics, and checks the row count against the footer.
type rowGroupReader struct {
	f      *File
	ctx    context.Context
	rg     int
	want   int64 // rows the footer gives the row group
	read   int64
	schema *arrow.Schema
	inner  pqarrow.RecordReader // nil for an empty row group
	cur    arrow.RecordBatch
	err    error
	done   bool
}

func (r *rowGroupReader) Next() (ok bool) {
	r.cur = nil
	if r.err != nil || r.done {
		return false
	}
	if r.inner == nil {
		r.done = true
		return false
	}
	if err := r.ctx.Err(); err != nil {
		r.err = fmt.Errorf("reading %s: row group %d: %w", r.f.obj.Key, r.rg, err)
		return false
	}
	defer func() {
		if p := recover(); p != nil {
			r.cur = nil
			r.err = corrupt(r.f.obj.Key, r.rg, fmt.Errorf("unreadable data (parquet reader panicked: %v)", p))
			ok = false
		}
	}()
	if !r.inner.Next() {
		if err := r.inner.Err(); err != nil {
			r.err = r.f.blob.wrap(r.f.obj.Key, r.rg, "data", err)
			return false
		}
		r.done = true
		if r.read != r.want {
			r.err = corrupt(r.f.obj.Key, r.rg, fmt.Errorf("corrupt data: %d rows read, the footer says %d", r.read, r.want))
		}
		return false
	}
	rec := r.inner.RecordBatch()
	r.read += rec.NumRows()
	switch {
	case r.read > r.want:
		r.err = corrupt(r.f.obj.Key, r.rg, fmt.Errorf("corrupt data: more rows than the footer's %d", r.want))
		return false
	case rec.NumRows() == 0:
		// pqarrow ends a row group with io.EOF, never with an empty batch: an empty
		// batch would make the caller spin.
		r.err = corrupt(r.f.obj.Key, r.rg, errors.New("corrupt data: empty record batch"))
		return false
	}
	r.cur = rec
	return true
}

func (r *rowGroupReader) RecordBatch() arrow.RecordBatch { return r.cur }

func (r *rowGroupReader) Err() error { return r.err }

func (r *rowGroupReader) Schema() *arrow.Schema { return r.schema }

func (r *rowGroupReader) Release() {
	r.cur = nil
	if r.inner == nil {
		return
	}
	inner := r.inner
	r.inner = nil
	func() {
		// Releasing readers left half-built by a panic may panic again.
		defer func() { _ = recover() }()
		inner.Release()
	}()
	if r.err == nil && !r.done {
		r.done = true
	}
}

// recordingBlob is the io.ReaderAt arrow-go reads through. It serves the end of the
// file from the bytes OpenFile already read, and remembers the Blob's own errors so
// that an I/O failure is not mistaken for a corrupt file.
type recordingBlob struct {
	Blob
	tail    []byte // the last bytes of the file, while the footer is parsed
	tailOff int64

	mu    sync.Mutex
	ioErr error
}

func (b *recordingBlob) ReadAt(p []byte, off int64) (int, error) {
	if b.tail != nil && off >= b.tailOff && off+int64(len(p)) <= b.tailOff+int64(len(b.tail)) {
		return copy(p, b.tail[off-b.tailOff:]), nil
	}
	n, err := b.Blob.ReadAt(p, off)
	if err != nil && !errors.Is(err, io.EOF) {
		b.mu.Lock()
		if b.ioErr == nil {
			b.ioErr = err
		}
		b.mu.Unlock()
	}
	return n, err
}

// wrap turns an error of arrow-go into the error a caller sees: the Blob's own error
// when the Blob failed, a *ParquetError otherwise.
// what is the part of the file that was being read: "footer" or "data".
func (b *recordingBlob) wrap(key string, rg int, what string, err error) error {
	b.mu.Lock()
	ioErr := b.ioErr
	b.mu.Unlock()
	if ioErr != nil {
		if rg >= 0 {
			return fmt.Errorf("reading %s: row group %d: %w", key, rg, ioErr)
		}
		return fmt.Errorf("reading %s: %w", key, ioErr)
	}
	return corrupt(key, rg, fmt.Errorf("unreadable Parquet %s: %w", what, err))
}

func corrupt(key string, rg int, err error) error {
	return &ParquetError{Key: key, RowGroup: rg, Err: err}
}
