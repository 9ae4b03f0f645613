// Package render draws plain-text tables for the terminal: `backflow schema`,
// `preview` and `state show` print through it.
package render

import (
	"bufio"
	"fmt"
	"io"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/rivo/uniseg"
)

// gap separates two columns.
const gap = "  "

// Table writes header (none when nil) and rows as left-aligned columns separated by
// two spaces, one line each, with no trailing spaces. Rows may have fewer or more
// cells than the header: there are as many columns as the widest row.
//
// Every cell is shown safely first (see Cell): control characters escaped, then cut
// to maxWidth terminal columns with "…" (maxWidth <= 0: no cut). Widths are display
// widths: a CJK character or an emoji counts two columns, a combining mark none, as
// most terminals draw them.
func Table(w io.Writer, header []string, rows [][]string, maxWidth int) error {
	lines := make([][]string, 0, len(rows)+1)
	if header != nil {
		lines = append(lines, header)
	}
	lines = append(lines, rows...)

	ncols := 0
	for _, l := range lines {
		ncols = max(ncols, len(l))
	}
	cells := make([][]string, len(lines))
	widths := make([]int, ncols)
	cellWidths := make([][]int, len(lines))
	for i, l := range lines {
		cells[i] = make([]string, ncols)
		cellWidths[i] = make([]int, ncols)
		for j := range ncols {
			if j < len(l) {
				cells[i][j] = Cell(l[j], maxWidth)
			}
			cellWidths[i][j] = Width(cells[i][j])
			widths[j] = max(widths[j], cellWidths[i][j])
		}
	}

	bw := bufio.NewWriter(w)
	for i := range cells {
		// The last non-empty cell ends the line: no trailing spaces.
		last := ncols - 1
		for last >= 0 && cells[i][last] == "" {
			last--
		}
		for j := 0; j <= last; j++ {
			if j > 0 {
				bw.WriteString(gap)
			}
			bw.WriteString(cells[i][j])
			if j < last {
				bw.WriteString(strings.Repeat(" ", widths[j]-cellWidths[i][j]))
			}
		}
		bw.WriteByte('\n')
	}
	return bw.Flush()
}

// Cell is s made safe for one table cell: control characters (newlines, tabs,
// escape sequences, C1 controls, bidirectional overrides) and invalid UTF-8 are
// shown escaped, as Go writes them in a string literal (`\n`, `\x1b`, `\u202e`), so
// that a value can neither break the table's lines nor drive the terminal; then the
// result is cut to maxWidth terminal columns, ending with "…" when it was cut
// (maxWidth <= 0: no cut).
func Cell(s string, maxWidth int) string {
	safe := escape(s)
	if maxWidth <= 0 || Width(safe) <= maxWidth {
		return safe
	}
	// Cut between grapheme clusters (an emoji with its modifiers, a letter with its
	// accents) and never inside an escape, keeping one column for the ellipsis.
	var b strings.Builder
	used, state := 0, -1
	for rest := s; rest != ""; {
		var cluster string
		var w int
		cluster, rest, w, state = uniseg.FirstGraphemeClusterInString(rest, state)
		if needsEscape(cluster) {
			cluster = escape(cluster)
			w = Width(cluster)
		}
		if used+w > maxWidth-1 {
			break
		}
		b.WriteString(cluster)
		used += w
	}
	b.WriteString("…")
	return b.String()
}

// Width is the number of terminal columns s takes.
func Width(s string) int { return uniseg.StringWidth(s) }

func escape(s string) string {
	if !needsEscape(s) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x80 && unicode.IsControl(r):
			fmt.Fprintf(&b, `\x%02x`, r)
		case unsafeRune(r):
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteString(s[i : i+size])
		}
		i += size
	}
	return b.String()
}

func needsEscape(s string) bool {
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if (r == utf8.RuneError && size == 1) || unicode.IsControl(r) || unsafeRune(r) {
			return true
		}
		i += size
	}
	return false
}

// unsafeRune reports the runes beyond ASCII that change how a terminal draws what
// follows: C1 controls, bidirectional embeddings, overrides and isolates, and the
// line and paragraph separators.
func unsafeRune(r rune) bool {
	switch {
	case unicode.IsControl(r):
		return true
	case r >= 0x202a && r <= 0x202e, r >= 0x2066 && r <= 0x2069, r == 0x200e, r == 0x200f, r == 0x061c:
		return true
	case r == 0x2028 || r == 0x2029:
		return true
	}
	return false
}
