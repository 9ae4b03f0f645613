package pipeline

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

func TestParseShard(t *testing.T) {
	for _, ok := range []string{"0/1", "0/4", "3/4", " 9/10 "} {
		if _, err := ParseShard(ok); err != nil {
			t.Errorf("ParseShard(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"", "4", "4/4", "-1/4", "a/4", "1/0", "1/b", "0/10001"} {
		if _, err := ParseShard(bad); err == nil {
			t.Errorf("ParseShard(%q) accepted", bad)
		}
	}
	s := Shard{Index: 2, Count: 4}
	sync, back, err := ParseStateName(s.StateName("users"))
	if err != nil || sync != "users" || back != s {
		t.Errorf("state name round trip: %q → %q %v %v", s.StateName("users"), sync, back, err)
	}
	if n := (Shard{}).StateName("users"); n != "users" {
		t.Errorf("unsharded state name %q", n)
	}
}

// Every file and every key belongs to exactly one shard; the shares are even; going from
// N to N+1 shards moves about 1/(N+1) of the files.
func TestShardOwnership(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	keys := make([]string, 20000)
	for i := range keys {
		keys[i] = fmt.Sprintf("exports/dt=2025-01-%02d/part-%05d-%x.parquet", rng.IntN(28)+1, i, rng.Uint64())
	}
	owner := func(n int, key string, byFile bool) int {
		got := -1
		for i := range n {
			s := Shard{Index: i, Count: n}
			if (byFile && s.OwnsFile(key)) || (!byFile && s.OwnsKey(key)) {
				if got >= 0 {
					t.Fatalf("%q belongs to shards %d and %d of %d", key, got, i, n)
				}
				got = i
			}
		}
		if got < 0 {
			t.Fatalf("%q belongs to no shard of %d", key, n)
		}
		return got
	}
	for _, byFile := range []bool{true, false} {
		counts := make([]int, 4)
		for _, k := range keys {
			counts[owner(4, k, byFile)]++
		}
		for i, c := range counts {
			if c < len(keys)/4*85/100 || c > len(keys)/4*115/100 {
				t.Errorf("byFile %v: shard %d of 4 has %d of %d keys", byFile, i, c, len(keys))
			}
		}
	}
	moved := 0
	for _, k := range keys {
		if owner(4, k, true) != owner(5, k, true) {
			moved++
		}
	}
	if moved > len(keys)*25/100 {
		t.Errorf("4 → 5 shards moved %d of %d files, want about a fifth", moved, len(keys))
	}
}
