package main

import (
	"fmt"
	"runtime"
	"slices"
	"strings"
	"time"
)

// measurement is one side of a scenario over its runs.
type measurement struct {
	scenario string
	side     string
	rows     int64 // rows (messages) each run handles
	unit     string
	walls    []time.Duration
	cpus     []time.Duration
	rss      []int64 // KiB, where measured
	outBytes int64   // bytes of output of one run, where measured
	failed   bool
}

func (m *measurement) add(wall, cpu time.Duration, rssKiB int64) {
	m.walls = append(m.walls, wall)
	m.cpus = append(m.cpus, cpu)
	if rssKiB > 0 {
		m.rss = append(m.rss, rssKiB)
	}
}

func medianDur(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func (m *measurement) wall() time.Duration { return medianDur(m.walls) }
func (m *measurement) cpu() time.Duration  { return medianDur(m.cpus) }

// rate is rows per second at the median wall-clock time.
func (m *measurement) rate() float64 {
	w := m.wall()
	if w <= 0 {
		return 0
	}
	return float64(m.rows) / w.Seconds()
}

func (m *measurement) maxRSS() int64 {
	if len(m.rss) == 0 {
		return 0
	}
	return slices.Max(m.rss)
}

// comparison is a ratio of two sides' rates, with the target it should meet (0: none, the
// ratio is given for context).
type comparison struct {
	scenario string
	what     string
	num, den *measurement
	target   float64
}

func (c comparison) ratio() float64 {
	if c.den.rate() == 0 {
		return 0
	}
	return c.num.rate() / c.den.rate()
}

// bestRatio compares the best (shortest) runs: on a machine shared with other jobs, the
// run that was disturbed least.
func (c comparison) bestRatio() float64 {
	if len(c.num.walls) == 0 || len(c.den.walls) == 0 {
		return 0
	}
	num := float64(c.num.rows) / slices.Min(c.num.walls).Seconds()
	den := float64(c.den.rows) / slices.Min(c.den.walls).Seconds()
	return num / den
}

// cpuRatio compares CPU time per row instead of wall-clock time: on a shared machine the
// wall-clock time moves with the neighbours' load, the CPU time much less.
func (c comparison) cpuRatio() float64 {
	if c.num.cpu() <= 0 || c.num.rows == 0 || c.den.rows == 0 {
		return 0
	}
	num := float64(c.num.rows) / c.num.cpu().Seconds()
	den := float64(c.den.rows) / c.den.cpu().Seconds()
	return num / den
}

// check is a pass/fail line that is not a ratio (peak memory).
type check struct {
	scenario string
	what     string
	value    string
	target   string
	ok       bool
}

type results struct {
	threads     int
	started     time.Time
	elapsed     time.Duration
	runs        int
	ms          []*measurement
	comparisons []comparison
	checks      []check
	notes       []string
}

func (r *results) measure(scenario, side string, rows int64, unit string) *measurement {
	m := &measurement{scenario: scenario, side: side, rows: rows, unit: unit}
	r.ms = append(r.ms, m)
	return m
}

func (r *results) note(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	r.notes = append(r.notes, s)
	fmt.Println("   note:", s)
}

func human(n float64) string {
	switch {
	case n >= 1e6:
		return fmt.Sprintf("%.2fM", n/1e6)
	case n >= 1e3:
		return fmt.Sprintf("%.0fk", n/1e3)
	}
	return fmt.Sprintf("%.0f", n)
}

func mib(kib int64) string {
	if kib <= 0 {
		return "–"
	}
	return fmt.Sprintf("%.0f MiB", float64(kib)/1024)
}

func (m *measurement) cells() []string {
	unit := m.unit
	if unit == "" {
		unit = "rows"
	}
	if m.failed && len(m.walls) == 0 {
		return []string{m.scenario, m.side, fmt.Sprintf("%s %s", human(float64(m.rows)), unit), "0", "FAILED", "–", "–", "–", "–", "–"}
	}
	out := "–"
	if m.outBytes > 0 {
		out = fmt.Sprintf("%.0f B", float64(m.outBytes)/float64(m.rows))
	}
	return []string{
		m.scenario, m.side, fmt.Sprintf("%s %s", human(float64(m.rows)), unit),
		fmt.Sprintf("%d", len(m.walls)),
		fmt.Sprintf("%.2f s", m.wall().Seconds()),
		fmt.Sprintf("%.2f s", slices.Min(m.walls).Seconds()),
		fmt.Sprintf("%s/s", human(m.rate())),
		fmt.Sprintf("%.2f s", m.cpu().Seconds()),
		mib(m.maxRSS()),
		out,
	}
}

var header = []string{"scenario", "side", "size", "runs", "median wall", "best wall", "rate (median)", "CPU (median)", "peak RSS", "out/row"}

func (r *results) rowsTable() [][]string {
	rows := [][]string{header}
	for _, m := range r.ms {
		rows = append(rows, m.cells())
	}
	return rows
}

func (r *results) verdicts() [][]string {
	rows := [][]string{{"scenario", "figure", "median wall clock", "best wall clock", "per CPU-second", "target", "met (median)"}}
	for _, c := range r.comparisons {
		target, met := fmt.Sprintf("≥ %.1f", c.target), yes(c.ratio() >= c.target)
		if c.target == 0 { // a figure given for context, with no target of its own
			target, met = "–", "–"
		}
		if c.num.wall() == 0 || c.den.wall() == 0 {
			rows = append(rows, []string{c.scenario, c.what, "failed", "–", "–", target, "NO"})
			continue
		}
		rows = append(rows, []string{c.scenario, c.what, fmt.Sprintf("%.2f", c.ratio()), fmt.Sprintf("%.2f", c.bestRatio()),
			fmt.Sprintf("%.2f", c.cpuRatio()), target, met})
	}
	for _, c := range r.checks {
		rows = append(rows, []string{c.scenario, c.what, c.value, "–", "–", c.target, yes(c.ok)})
	}
	return rows
}

func yes(b bool) string {
	if b {
		return "yes"
	}
	return "NO"
}

func textTable(rows [][]string) string {
	widths := make([]int, len(rows[0]))
	for _, row := range rows {
		for i, c := range row {
			widths[i] = max(widths[i], len([]rune(c)))
		}
	}
	var b strings.Builder
	for n, row := range rows {
		for i, c := range row {
			b.WriteString(c)
			if i < len(row)-1 {
				b.WriteString(strings.Repeat(" ", widths[i]-len([]rune(c))+2))
			}
		}
		b.WriteString("\n")
		if n == 0 {
			for i, w := range widths {
				b.WriteString(strings.Repeat("-", w))
				if i < len(widths)-1 {
					b.WriteString("  ")
				}
			}
			b.WriteString("\n")
		}
	}
	return b.String()
}

func mdTable(rows [][]string) string {
	var b strings.Builder
	for n, row := range rows {
		b.WriteString("| " + strings.Join(row, " | ") + " |\n")
		if n == 0 {
			b.WriteString("|" + strings.Repeat("---|", len(row)) + "\n")
		}
	}
	return b.String()
}

func (r *results) heading() string {
	return fmt.Sprintf("%s, %s/%s, %d CPU(s), %d thread(s) a side, %s",
		r.started.UTC().Format("2006-01-02 15:04 UTC"), runtime.GOOS, runtime.GOARCH,
		runtime.NumCPU(), r.threads, runtime.Version())
}

func (r *results) text() string {
	var b strings.Builder
	fmt.Fprintf(&b, "Results (%s; the whole bench took %s)\n\n", r.heading(), r.elapsed.Round(time.Second))
	b.WriteString(textTable(r.rowsTable()))
	b.WriteString("\n")
	b.WriteString(textTable(r.verdicts()))
	for _, n := range r.notes {
		b.WriteString("\nnote: " + n)
	}
	b.WriteString("\n")
	return b.String()
}

func (r *results) markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "Results: %s; the whole bench took %s.\n\n", r.heading(), r.elapsed.Round(time.Second))
	b.WriteString(mdTable(r.rowsTable()))
	b.WriteString("\n")
	b.WriteString(mdTable(r.verdicts()))
	if len(r.notes) > 0 {
		b.WriteString("\n")
		for _, n := range r.notes {
			b.WriteString("- " + n + "\n")
		}
	}
	return b.String()
}
