package pipeline

import (
	"math/rand/v2"
	"testing"
)

func TestRangeSetOutOfOrder(t *testing.T) {
	s := newRangeSet(10, nil)
	s.add(20, 30)
	if w := s.leading(); w != 10 {
		t.Fatalf("leading %d after a gap, want 10", w)
	}
	s.add(30, 35)
	if got := s.beyond(); len(got) != 1 || got[0] != [2]int64{20, 35} {
		t.Fatalf("beyond = %v, want [[20 35]]", got)
	}
	s.add(10, 20)
	if w := s.leading(); w != 35 || s.beyond() != nil {
		t.Fatalf("leading %d beyond %v once the gap closed, want 35 and none", w, s.beyond())
	}
	s.add(5, 12) // overlap with what is there: no change
	if w := s.leading(); w != 35 {
		t.Fatalf("overlap changed leading to %d", w)
	}
	if !s.contains(0) || !s.contains(34) || s.contains(35) {
		t.Fatal("contains is wrong at the edges")
	}
	if !s.covers(3, 35) || s.covers(30, 36) || !s.covers(7, 7) {
		t.Fatal("covers is wrong")
	}
}

func TestRangeSetRestoresFromCheckpoint(t *testing.T) {
	s := newRangeSet(100, [][2]int64{{300, 400}, {200, 250}})
	if s.leading() != 100 || len(s.beyond()) != 2 || s.contains(150) || !s.contains(210) {
		t.Fatalf("restored set %v", s.iv)
	}
}

// Random partitions acknowledged in random order, with random overlaps: the set always
// equals the union, and leading never passes a row not acknowledged.
func TestRangeSetRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for trial := 0; trial < 300; trial++ {
		const n = 500
		var truth [n]bool
		s := newRangeSet(0, nil)
		for k := 0; k < 40; k++ {
			a := int64(rng.IntN(n))
			b := a + int64(rng.IntN(40))
			if b > n {
				b = n
			}
			s.add(a, b)
			for x := a; x < b; x++ {
				truth[x] = true
			}
			for x := int64(0); x < n; x++ {
				if s.contains(x) != truth[x] {
					t.Fatalf("trial %d: contains(%d) = %v, want %v (set %v)", trial, x, s.contains(x), truth[x], s.iv)
				}
			}
			lead := int64(0)
			for lead < n && truth[lead] {
				lead++
			}
			if s.leading() != lead {
				t.Fatalf("trial %d: leading %d, want %d", trial, s.leading(), lead)
			}
			for i := 1; i < len(s.iv); i++ {
				if s.iv[i][0] <= s.iv[i-1][1] {
					t.Fatalf("trial %d: intervals not disjoint and apart: %v", trial, s.iv)
				}
			}
		}
	}
}

func TestRangeSetIntersects(t *testing.T) {
	s := newRangeSet(0, [][2]int64{{10, 20}})
	for _, c := range []struct {
		a, b int64
		want bool
	}{{0, 10, false}, {5, 11, true}, {19, 30, true}, {20, 30, false}, {12, 12, false}} {
		if got := s.intersects(c.a, c.b); got != c.want {
			t.Errorf("intersects(%d,%d) = %v, want %v", c.a, c.b, got, c.want)
		}
	}
}
