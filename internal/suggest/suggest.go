// Package suggest finds the likely intended name for a misspelt one: the one rule for
// "did you mean" that configuration keys, mapping columns and command-line column
// names share.
package suggest

import "strings"

// Closest returns the name of names nearest to name, case-insensitively, when it is
// near enough to be a likely typo (or differs only in case), else "".
func Closest(name string, names []string) string {
	if len(name) > 64 {
		return "" // not a typo of any name; spare the quadratic distance
	}
	best, bestDist := "", -1
	ln := strings.ToLower(name)
	for _, n := range names {
		d := Distance(ln, strings.ToLower(n))
		if bestDist < 0 || d < bestDist {
			best, bestDist = n, d
		}
	}
	if best == "" || bestDist > min(2, max(1, len([]rune(name))/3)) {
		return ""
	}
	return best
}

// Distance is the edit distance between a and b, by runes, counting a swap of two
// adjacent runes as one edit (the commonest typo: "mdoe").
func Distance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	d := make([][]int, len(ra)+1)
	for i := range d {
		d[i] = make([]int, len(rb)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(ra); i++ {
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && ra[i-1] == rb[j-2] && ra[i-2] == rb[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(ra)][len(rb)]
}
