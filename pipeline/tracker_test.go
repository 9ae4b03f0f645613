package pipeline

import (
	"math/rand/v2"
	"testing"
)

func TestRangeTrackerOutOfOrder(t *testing.T) {
	tr := newRangeTracker(10)
	if w := tr.ack(20, 30); w != 10 {
		t.Fatalf("watermark %d after a gap, want 10", w)
	}
	if w := tr.ack(30, 35); w != 10 {
		t.Fatalf("watermark %d, want 10", w)
	}
	if w := tr.ack(10, 20); w != 35 {
		t.Fatalf("watermark %d once the gap closed, want 35", w)
	}
	if w := tr.ack(35, 35); w != 35 {
		t.Fatalf("empty range moved the watermark to %d", w)
	}
}

func TestRangeTrackerRandomOrder(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for trial := 0; trial < 200; trial++ {
		var bounds []int64
		var pos int64
		for pos < 1000 {
			pos += int64(rng.IntN(50) + 1)
			bounds = append(bounds, pos)
		}
		type r struct{ s, e int64 }
		var ranges []r
		prev := int64(0)
		for _, b := range bounds {
			ranges = append(ranges, r{prev, b})
			prev = b
		}
		rng.Shuffle(len(ranges), func(i, j int) { ranges[i], ranges[j] = ranges[j], ranges[i] })
		tr := newRangeTracker(0)
		var w int64
		for i, rg := range ranges {
			w = tr.ack(rg.s, rg.e)
			// The watermark never passes a range not yet acknowledged.
			for _, later := range ranges[i+1:] {
				if later.s < w {
					t.Fatalf("trial %d: watermark %d passed unacknowledged range [%d,%d)", trial, w, later.s, later.e)
				}
			}
		}
		if w != prev {
			t.Fatalf("trial %d: final watermark %d, want %d", trial, w, prev)
		}
	}
}
