package arrowmem_test

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"unsafe"

	"github.com/backflowhq/backflow/internal/arrowmem"
)

func aligned(b []byte) bool {
	return cap(b) == 0 || uintptr(unsafe.Pointer(unsafe.SliceData(b)))%64 == 0
}

// TestPoolModel runs random allocations, reallocations and frees on several
// goroutines sharing one pool, against a plain model of what each live buffer holds:
// every buffer is zeroed where it is new, keeps what it held across a Reallocate, starts
// on 64 bytes, and is never handed to two owners (another owner's writes would show).
func TestPoolModel(t *testing.T) {
	for _, limit := range []int{1 << 20, 0} {
		t.Run(fmt.Sprintf("limit %d", limit), func(t *testing.T) { testPoolModel(t, arrowmem.NewPool(limit)) })
	}
}

func testPoolModel(t *testing.T, pool *arrowmem.Pool) {
	sizes := []int{1, 63, 64, 100, 4095, 4096, 4097, 8192, 30000, 65536, 300000, 1<<20 + 5}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 7))
			type live struct{ buf, want []byte }
			var bufs []live
			check := func(op string, l live) bool {
				if len(l.buf) != len(l.want) || !aligned(l.buf) || !bytes.Equal(l.buf, l.want) {
					t.Errorf("goroutine %d, after %s: buffer of %d bytes (want %d), aligned %v, contents differ from the model",
						g, op, len(l.buf), len(l.want), aligned(l.buf))
					return false
				}
				return true
			}
			fill := func(l *live) {
				tag := byte(rng.IntN(255) + 1)
				for i := range l.buf {
					l.buf[i], l.want[i] = tag, tag
				}
			}
			for step := range 600 {
				op := rng.IntN(10)
				switch {
				case len(bufs) == 0:
					op = 0
				case len(bufs) > 12:
					op = 9 // a bounded number of live buffers
				}
				switch {
				case op >= 7:
					i := rng.IntN(len(bufs))
					pool.Free(bufs[i].buf)
					bufs = append(bufs[:i], bufs[i+1:]...)
				case op < 4:
					size := sizes[rng.IntN(len(sizes))]
					l := live{buf: pool.Allocate(size), want: make([]byte, size)}
					if !check("Allocate", l) {
						return
					}
					if rng.IntN(2) == 0 {
						fill(&l)
					}
					bufs = append(bufs, l)
				case op < 7:
					i := rng.IntN(len(bufs))
					size := sizes[rng.IntN(len(sizes))]
					want := make([]byte, size)
					copy(want, bufs[i].want)
					bufs[i] = live{buf: pool.Reallocate(size, bufs[i].buf), want: want}
					if !check("Reallocate", bufs[i]) {
						return
					}
					if rng.IntN(2) == 0 {
						fill(&bufs[i])
					}
				}
				if step%50 != 49 {
					continue
				}
				for _, l := range bufs {
					if !check(fmt.Sprintf("step %d", step), l) {
						return
					}
				}
			}
		})
	}
	wg.Wait()
}

func TestPoolKeepsAtMostItsLimit(t *testing.T) {
	pool := arrowmem.NewPool(1 << 20)
	var bufs [][]byte
	for range 40 {
		bufs = append(bufs, pool.Allocate(128<<10-100)) // the 128 KiB class
	}
	for _, b := range bufs {
		pool.Free(b)
	}
	if got := pool.Held(); got != 1<<20 {
		t.Fatalf("holds %d bytes after 40 frees of 128 KiB, want its limit %d", got, 1<<20)
	}
	for range 8 {
		pool.Allocate(128 << 10)
	}
	if got := pool.Held(); got != 0 {
		t.Fatalf("holds %d bytes after taking back every buffer it kept", got)
	}
}

func TestPoolIgnoresForeignBuffers(t *testing.T) {
	pool := arrowmem.NewPool(0)
	pool.Free(nil)
	pool.Free(make([]byte, 5000))     // not a class's size
	pool.Free(make([]byte, 1<<27))    // above the largest class
	pool.Free(make([]byte, 4096)[1:]) // capacity 4095
	if b := pool.Allocate(0); len(b) != 0 {
		t.Fatalf("Allocate(0) = %d bytes", len(b))
	}
	big := pool.Allocate(1<<26 + 1)
	if len(big) != 1<<26+1 || !aligned(big) {
		t.Fatalf("Allocate above the largest class: %d bytes, aligned %v", len(big), aligned(big))
	}
	pool.Free(big)
}

// TestPoolCapacity checks that a pooled buffer's capacity is at most an eighth over its
// size, and that a buffer freed comes back for the sizes of its class.
func TestPoolCapacity(t *testing.T) {
	pool := arrowmem.NewPool(1 << 30)
	for _, size := range []int{1, 4096, 4097, 5000, 8192, 8193, 100_000, 1<<20 + 1, 9 << 20, 1 << 26, 1<<26 + 1} {
		b := pool.Allocate(size)
		if len(b) != size || cap(b) < size || float64(cap(b)) > float64(size)*1.125+64 {
			t.Errorf("Allocate(%d): len %d cap %d", size, len(b), cap(b))
		}
		pool.Free(b)
		if again := pool.Allocate(size); unsafe.SliceData(again) != unsafe.SliceData(b) && size > 4096 && size <= 1<<26 {
			t.Errorf("Allocate(%d) after freeing a buffer of that size did not reuse it", size)
		}
	}
}
