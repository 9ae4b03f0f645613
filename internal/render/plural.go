package render

import "strconv"

// Plural writes a count with its noun, "1 file" or "3 files": one helper so that no
// message says "1 files". noun is the singular; its plural adds an s.
func Plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return strconv.Itoa(n) + " " + noun + "s"
}
