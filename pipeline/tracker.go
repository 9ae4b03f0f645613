package pipeline

import "sort"

// rangeSet is the set of row indices of one file that one destination acknowledged, as
// sorted, disjoint, non-adjacent [start, end) intervals. Acknowledgements arrive in any
// order (row groups are mapped in parallel, batches written concurrently) and may overlap
// rows acknowledged by an earlier run. It is owned by one goroutine at a time.
type rangeSet struct {
	iv [][2]int64
}

// newRangeSet returns the set [0, leading) ∪ more.
func newRangeSet(leading int64, more [][2]int64) *rangeSet {
	s := &rangeSet{}
	s.add(0, leading)
	for _, r := range more {
		s.add(r[0], r[1])
	}
	return s
}

// add records [start, end).
func (s *rangeSet) add(start, end int64) {
	if end <= start {
		return
	}
	// First interval that ends at or after start (touching intervals merge).
	i := sort.Search(len(s.iv), func(i int) bool { return s.iv[i][1] >= start })
	j := i
	for j < len(s.iv) && s.iv[j][0] <= end {
		start = min(start, s.iv[j][0])
		end = max(end, s.iv[j][1])
		j++
	}
	merged := [2]int64{start, end}
	s.iv = append(s.iv[:i], append([][2]int64{merged}, s.iv[j:]...)...)
}

// contains tells whether row x is in the set.
func (s *rangeSet) contains(x int64) bool {
	i := sort.Search(len(s.iv), func(i int) bool { return s.iv[i][1] > x })
	return i < len(s.iv) && s.iv[i][0] <= x
}

// covers tells whether every row of [start, end) is in the set.
func (s *rangeSet) covers(start, end int64) bool {
	if end <= start {
		return true
	}
	i := sort.Search(len(s.iv), func(i int) bool { return s.iv[i][1] > start })
	return i < len(s.iv) && s.iv[i][0] <= start && s.iv[i][1] >= end
}

// intersects tells whether some row of [start, end) is in the set.
func (s *rangeSet) intersects(start, end int64) bool {
	if end <= start {
		return false
	}
	i := sort.Search(len(s.iv), func(i int) bool { return s.iv[i][1] > start })
	return i < len(s.iv) && s.iv[i][0] < end
}

// leading is how many leading rows are in the set (the checkpoint's watermark).
func (s *rangeSet) leading() int64 {
	if len(s.iv) > 0 && s.iv[0][0] == 0 {
		return s.iv[0][1]
	}
	return 0
}

// beyond returns the intervals after the leading one (nil when none).
func (s *rangeSet) beyond() [][2]int64 {
	rest := s.iv
	if len(rest) > 0 && rest[0][0] == 0 {
		rest = rest[1:]
	}
	if len(rest) == 0 {
		return nil
	}
	return append([][2]int64(nil), rest...)
}

func (s *rangeSet) clone() *rangeSet {
	return &rangeSet{iv: append([][2]int64(nil), s.iv...)}
}
