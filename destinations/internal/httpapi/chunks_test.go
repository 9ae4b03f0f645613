package httpapi_test

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/backflowhq/backflow/destinations"
	"github.com/backflowhq/backflow/destinations/internal/httpapi"
)

// TestDeliverChunks: requests within the limits, in order; a refused message is
// reported by its message index; the first request that fails otherwise stops the rest.
func TestDeliverChunks(t *testing.T) {
	items := [][]byte{[]byte("a"), []byte("b"), []byte("c"), []byte("d"), []byte("e"), []byte("f")}
	var sent [][]int
	boom := errors.New("connection reset")
	send := func(_ context.Context, idx []int) error {
		sent = append(sent, slices.Clone(idx))
		switch {
		case slices.Contains(idx, 4):
			return boom
		case idx[0] == 0:
			// the second item of the request (message 1) is refused
			return &destinations.BatchError{Failed: []destinations.Failure{{Index: 1, Err: errors.New("bad")}}}
		}
		return nil
	}
	failed, err := httpapi.DeliverChunks(context.Background(), httpapi.Limits{MaxCount: 2}, items, []int{0, 1, 2, 3, 4, 5}, send)
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v, want the failed request's", err)
	}
	if want := [][]int{{0, 1}, {2, 3}, {4, 5}}; !slices.EqualFunc(sent, want, slices.Equal[[]int]) {
		t.Errorf("requests %v, want %v (none after the failure)", sent, want)
	}
	if len(failed) != 1 || failed[0].Index != 1 {
		t.Errorf("failed = %+v, want message 1", failed)
	}
}
