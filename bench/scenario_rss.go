package main

import (
	"context"
	"fmt"
	"path/filepath"
)

// rssLimitMiB is the peak memory `backflow sync` must stay under, whatever the export's size.
const rssLimitMiB = 200

// scenarioRSS runs `backflow sync` to a file once per export size, each export being ONE
// Parquet file of that many rows in row groups of -rss-row-group rows (512 Ki: large row
// groups, as Spark or DuckDB write for big tables, and at least two in the smallest
// export so that every worker is busy in every run), and records the child's peak
// resident set size (getrusage's ru_maxrss). The exports then differ only in how many
// row groups the file holds.
func scenarioRSS(ctx context.Context, e *env, res *results) error {
	// Each size runs twice: with the CLI's default soft memory limit (GOMEMLIMIT unset),
	// and with none at all (GOMEMLIMIT=off), so that the collector alone keeps the peak.
	var ms []*measurement
	for _, limit := range []struct{ name, env string }{{"", ""}, {", GOMEMLIMIT=off", "GOMEMLIMIT=off"}} {
		for _, rows := range e.o.rssRows {
			d, err := e.dataset(1, rows, e.o.rssRowGroup)
			if err != nil {
				return err
			}
			m := res.measure("rss", fmt.Sprintf("backflow sync (1 file, %s rows%s)", human(float64(rows)), limit.name), rows, "rows")
			src := syncConfig{source: d.dir}
			if limit.env != "" {
				src.extraEnv = []string{limit.env}
			}
			s, err := e.fileSide(m, filepath.Join(e.dir, "rss", fmt.Sprint(rows)), src, rows)
			if err != nil {
				return err
			}
			// One run: peak memory, not speed, is the figure here.
			if err := alternate(ctx, 1, e.o.verbose, []side{s}); err != nil {
				return err
			}
			fmt.Printf("   %d rows (%.0f MiB of Parquet%s): peak RSS %s in %.1f s\n", rows, float64(d.bytes)/(1<<20), limit.name, mib(m.maxRSS()), m.wall().Seconds())
			ms = append(ms, m)
		}
	}
	res.note("rss: peak RSS is the child's ru_maxrss. Each `backflow sync` is started from a small helper process (peak %s), never from the bench itself: Linux counts the address space a child was started from in its ru_maxrss.", mib(e.spawner.floorKiB))
	per := len(e.o.rssRows)
	for i, m := range ms {
		ok := m.maxRSS() < rssLimitMiB*1024
		what := fmt.Sprintf("peak RSS, %s rows", human(float64(m.rows)))
		if i >= per {
			what += ", GOMEMLIMIT=off"
		}
		if first := ms[i-i%per]; m != first {
			growth := float64(m.maxRSS()) / float64(first.maxRSS())
			what += fmt.Sprintf(" (×%.2f the %s-row run's)", growth, human(float64(first.rows)))
		}
		res.checks = append(res.checks, check{"rss", what, mib(m.maxRSS()), fmt.Sprintf("< %d MiB", rssLimitMiB), ok})
	}
	return nil
}

// rssChecks adds a check of the peak memory of every other `backflow sync` side measured.
func (r *results) rssChecks() {
	for _, m := range r.ms {
		if m.scenario == "rss" || m.maxRSS() == 0 {
			continue
		}
		r.checks = append(r.checks, check{m.scenario, "peak RSS, " + m.side, mib(m.maxRSS()), fmt.Sprintf("< %d MiB", rssLimitMiB), m.maxRSS() < rssLimitMiB*1024})
	}
}
