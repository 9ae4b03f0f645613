package httpapi

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/backflowhq/backflow/destinations"
	"github.com/backflowhq/backflow/mapper"
)

// Sender sends the messages at idx (indices into a Write's msgs) as one request. Its
// result means what Write's does, for those messages: nil all delivered; a
// *destinations.BatchError whose Failed indices are positions in idx (not message
// indices) refused, the others delivered; a *destinations.PermanentError the request
// refused as a whole; anything else nothing delivered.
type Sender func(ctx context.Context, idx []int) error

// Deliver sends the messages at idx with send and isolates the refused ones: a request
// refused as a whole (a splittable *PermanentError: not 401/403/407) is bisected, and its
// halves sent again, until each refused message is alone. It returns the refused messages
// (by message index) and, when a request failed otherwise (a transient failure, the
// credentials refused, ctx done), that error: then nothing of idx may be taken as
// delivered by the caller, though earlier requests of it were.
//
// Doing this inside a Write rather than letting destinations.Wrap split the whole Write
// keeps a Write of several requests (several endpoints, or a batch_size above the API's
// per-request limit) from sending its delivered requests again.
func Deliver(ctx context.Context, idx []int, send Sender) ([]destinations.Failure, error) {
	var failed []destinations.Failure
	err := deliver(ctx, idx, send, &failed)
	return failed, err
}

func deliver(ctx context.Context, idx []int, send Sender, failed *[]destinations.Failure) error {
	if len(idx) == 0 {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	err := send(ctx, idx)
	if err == nil {
		return nil
	}
	var be *destinations.BatchError
	if errors.As(err, &be) {
		for _, f := range be.Failed {
			if f.Index < 0 || f.Index >= len(idx) {
				return fmt.Errorf("the API refused item %d of a request of %d: %w", f.Index, len(idx), f.Err)
			}
			*failed = append(*failed, destinations.Failure{Index: idx[f.Index], Err: f.Err})
		}
		return nil
	}
	var pe *destinations.PermanentError
	if !errors.As(err, &pe) || !destinations.Splittable(pe) {
		return err
	}
	if len(idx) == 1 {
		*failed = append(*failed, destinations.Failure{Index: idx[0], Err: err})
		return nil
	}
	half := len(idx) / 2
	if err := deliver(ctx, idx[:half], send, failed); err != nil {
		return err
	}
	return deliver(ctx, idx[half:], send, failed)
}

// Result is Write's result for the refused messages: nil when none, else a
// *destinations.BatchError sorted by index, each index once.
func Result(failed []destinations.Failure) error {
	if len(failed) == 0 {
		return nil
	}
	return &destinations.BatchError{Failed: Sorted(failed)}
}

// Sorted sorts failed by index and keeps the first failure of each index.
func Sorted(failed []destinations.Failure) []destinations.Failure {
	slices.SortStableFunc(failed, func(a, b destinations.Failure) int { return a.Index - b.Index })
	return slices.CompactFunc(failed, func(a, b destinations.Failure) bool { return a.Index == b.Index })
}

// Limits are an API's limits on one request.
type Limits struct {
	MaxCount int // items per request
	MaxBytes int // body bytes per request, the envelope included; 0: no limit
	Overhead int // bytes of the envelope around the items (they are separated by one byte)
}

// Fits reports whether an item of size bytes can be sent at all.
func (l Limits) Fits(size int) bool { return l.MaxBytes <= 0 || l.Overhead+size <= l.MaxBytes }

// Chunks cuts idx, in order, into requests of at most MaxCount items and MaxBytes bytes;
// size(i) is the encoded size of message i's item. An item that does not fit alone gets
// a request of its own (callers refuse those before, see Fits).
func (l Limits) Chunks(idx []int, size func(i int) int) [][]int {
	var out [][]int
	start, bytes := 0, l.Overhead
	for k, i := range idx {
		s := size(i)
		n := k - start
		if n > 0 && ((l.MaxCount > 0 && n >= l.MaxCount) || (l.MaxBytes > 0 && bytes+1+s > l.MaxBytes)) {
			out = append(out, idx[start:k:k])
			start, bytes = k, l.Overhead
		}
		if k > start {
			bytes++ // the separator
		}
		bytes += s
	}
	if start < len(idx) {
		out = append(out, idx[start:])
	}
	return out
}

// AppendJoin appends prefix, the items at idx separated by commas, and suffix.
func AppendJoin(dst []byte, prefix string, items [][]byte, idx []int, suffix string) []byte {
	n := len(prefix) + len(suffix) + len(idx)
	for _, i := range idx {
		n += len(items[i])
	}
	dst = slices.Grow(dst, n)
	dst = append(dst, prefix...)
	for k, i := range idx {
		if k > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, items[i]...)
	}
	return append(dst, suffix...)
}

// TooLarge is the refusal of a message whose item alone is over an API's request limit.
func TooLarge(api string, size int, l Limits) error {
	return &destinations.PermanentError{Err: fmt.Errorf("the message is %d bytes as %s expects it, over its limit of %d bytes per request", size+l.Overhead, api, l.MaxBytes)}
}

// Skip, returned by an encoder, means the message has no item of this kind (it is not
// refused).
var Skip = errors.New("no item")

// Encode encodes every message with enc into one buffer, buf's backing array reused.
// It returns each message's item (nil for a message enc refused or skipped), the indices
// of the encoded messages, the refusals, and the buffer (to pool).
func Encode(buf []byte, msgs []mapper.Message, enc func(dst []byte, m *mapper.Message) ([]byte, error)) (items [][]byte, idx []int, failed []destinations.Failure, out []byte) {
	buf = buf[:0]
	ends := make([]int, len(msgs)+1)
	idx = make([]int, 0, len(msgs))
	for i := range msgs {
		start := len(buf)
		var err error
		buf, err = enc(buf, &msgs[i])
		switch {
		case errors.Is(err, Skip):
			buf = buf[:start]
		case err != nil:
			buf = buf[:start]
			failed = append(failed, destinations.Failure{Index: i, Err: &destinations.PermanentError{Err: err}})
		default:
			idx = append(idx, i)
		}
		ends[i+1] = len(buf)
	}
	// Sliced only now: appending may have moved the buffer.
	items = make([][]byte, len(msgs))
	for _, i := range idx {
		items[i] = buf[ends[i]:ends[i+1]:ends[i+1]]
	}
	return items, idx, failed, buf
}

// Keep returns the indices of idx for which keep returns nil, and appends the others,
// with keep's error, to failed. It reuses idx's array.
func Keep(idx []int, failed []destinations.Failure, keep func(i int) error) ([]int, []destinations.Failure) {
	out := idx[:0]
	for _, i := range idx {
		if err := keep(i); err != nil {
			failed = append(failed, destinations.Failure{Index: i, Err: err})
			continue
		}
		out = append(out, i)
	}
	return out, failed
}

// DeliverChunks sends the messages at idx in requests within l (items[i] is message i's
// encoded size), each through Deliver, and returns every refused message. It stops at
// the first request that failed otherwise, returning its error: the caller then takes
// nothing of idx as delivered.
func DeliverChunks(ctx context.Context, l Limits, items [][]byte, idx []int, send Sender) ([]destinations.Failure, error) {
	var failed []destinations.Failure
	for _, chunk := range l.Chunks(idx, func(i int) int { return len(items[i]) }) {
		f, err := Deliver(ctx, chunk, send)
		failed = append(failed, f...)
		if err != nil {
			return failed, err
		}
	}
	return failed, nil
}

// Body is a message's traits or properties, {} when it has none.
func Body(m *mapper.Message) []byte {
	if m.BodyEnd > m.BodyStart {
		return m.Body()
	}
	return []byte("{}")
}

// BufPool recycles request buffers between Writes. The zero value is ready.
type BufPool struct{ p sync.Pool }

// Get returns a buffer to append to (its old contents are the caller's to reset).
func (b *BufPool) Get() *[]byte {
	if bp, ok := b.p.Get().(*[]byte); ok {
		return bp
	}
	return new([]byte)
}

// Put returns a buffer for a later Get.
func (b *BufPool) Put(bp *[]byte) { b.p.Put(bp) }
