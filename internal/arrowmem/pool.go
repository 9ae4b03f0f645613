// Package arrowmem has an Arrow memory allocator that reuses the buffers arrow-go frees.
package arrowmem

import (
	"math/bits"
	"sync"
	"unsafe"

	"github.com/apache/arrow-go/v18/arrow/memory"
)

// Buffer sizes the pool keeps: above 4 KiB (smaller ones cost little to allocate) and up
// to 64 MiB (larger ones are rare, a column of one batch over 64 MiB, and would pin too
// much memory between uses). Each doubling of sizes has eight classes, so a buffer's
// capacity is at most an eighth over its size.
const (
	minPooledShift     = 12 // sizes above 1<<minPooledShift are pooled
	maxPooledShift     = 26 // sizes up to 1<<maxPooledShift are pooled
	classesPerDoubling = 8
	numClasses         = (maxPooledShift - minPooledShift) * classesPerDoubling
	alignment          = 64 // what arrow-go's allocators give: buffers start on 64 bytes
)

// Pool is a memory.Allocator that reuses the buffers arrow-go frees. Decoding a row
// group allocates its record batches' buffers batch after batch, and arrow-go frees each
// batch's buffers when the batch is released; with Go's allocator each buffer was garbage
// for the collector, a third of what a sync allocates. The pool hands a freed buffer to the
// next allocation of its size class instead, so the collector runs less often.
//
// It keeps at most its limit's bytes of freed buffers (what the batches in flight use
// between them): more would be memory held for nothing, counted twice by the collector's
// pacing. A buffer freed beyond the limit is left to the collector.
//
// Its contract is memory.Allocator's, with GoAllocator's guarantees: Allocate returns
// zeroed memory starting on 64 bytes, Reallocate keeps the contents up to the smaller of
// the two sizes and zeroes what it adds, and Free must be called at most once a buffer,
// after its last use (arrow-go's reference counting does so). A buffer that did not come
// from the pool is left to the collector. Safe for concurrent use.
type Pool struct {
	limit int

	mu   sync.Mutex // guards free and held
	free [numClasses][][]byte
	held int // bytes in free
}

// DefaultLimit is the limit of NewPool(0): what the record batches of 4,096 rows a sync
// decodes and maps at once use between them (about 600 KiB each for a table of ten
// columns). What the pool keeps is held for the whole run, so the limit stays small.
const DefaultLimit = 2 << 20

// NewPool returns an empty pool keeping at most limit bytes of freed buffers
// (DefaultLimit when limit <= 0).
func NewPool(limit int) *Pool {
	if limit <= 0 {
		limit = DefaultLimit
	}
	return &Pool{limit: limit}
}

var _ memory.Allocator = (*Pool)(nil)

// Held returns the bytes of freed buffers the pool keeps.
func (p *Pool) Held() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.held
}

// class returns the index and the capacity of the size class of size, and whether the
// pool keeps buffers of that size. For 2^(k-1) < size <= 2^k, the capacity is size
// rounded up to a multiple of 2^(k-4): one of 9..16 × 2^(k-4).
func class(size int) (index, capacity int, pooled bool) {
	if size <= 1<<minPooledShift || size > 1<<maxPooledShift {
		return 0, 0, false
	}
	k := bits.Len(uint(size - 1))
	step := 1 << (k - 4)
	capacity = (size + step - 1) &^ (step - 1)
	index = (k-minPooledShift-1)*classesPerDoubling + capacity/step - 9
	return index, capacity, true
}

// Allocate returns size zeroed bytes; their capacity is the size class's, so that a
// Reallocate within the class needs no copy.
func (p *Pool) Allocate(size int) []byte {
	i, c, pooled := class(size)
	if !pooled {
		return alignedMake(size, size)
	}
	p.mu.Lock()
	list := p.free[i]
	if n := len(list); n > 0 {
		buf := list[n-1][:size]
		list[n-1] = nil
		p.free[i] = list[:n-1]
		p.held -= c
		p.mu.Unlock()
		clear(buf)
		return buf
	}
	p.mu.Unlock()
	return alignedMake(size, c)
}

// Reallocate returns a buffer of size bytes holding b's contents (up to size).
func (p *Pool) Reallocate(size int, b []byte) []byte {
	if size <= cap(b) {
		if size > len(b) {
			clear(b[len(b):size])
		}
		return b[:size]
	}
	nb := p.Allocate(size)
	copy(nb, b)
	p.Free(b)
	return nb
}

// Free keeps b for the next allocation of its class when it is one of the pool's buffers
// (its capacity a class's size, its start aligned).
func (p *Pool) Free(b []byte) {
	c := cap(b)
	i, want, pooled := class(c)
	if !pooled || want != c {
		return
	}
	b = b[:c]
	if uintptr(unsafe.Pointer(unsafe.SliceData(b)))%alignment != 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.held+c > p.limit {
		return
	}
	p.free[i] = append(p.free[i], b)
	p.held += c
}

// alignedMake returns a zeroed slice of length size and capacity c starting on 64 bytes.
func alignedMake(size, c int) []byte {
	buf := make([]byte, c+alignment)
	shift := 0
	if r := uintptr(unsafe.Pointer(unsafe.SliceData(buf))) % alignment; r != 0 {
		shift = alignment - int(r)
	}
	return buf[shift : shift+size : shift+c]
}
