// Package schedule runs syncs on their schedules for `backflow serve`: it parses the
// `schedule:` of a sync (an interval or a cron expression), starts runs without ever
// letting a sync overlap itself, bounds how many syncs run at once, shuts down
// gracefully, and serves the HTTP endpoints (/healthz, /metrics, /syncs,
// POST /syncs/{name}/run).
package schedule

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/robfig/cron/v3"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/internal/cronspec"
)

// MinEvery is the shortest interval `every` accepts.
const MinEvery = time.Second

// Schedule says when a sync runs next.
type Schedule interface {
	// Next returns the first run time strictly after after, or the zero time when the
	// schedule never fires again (a manual sync). It is pure: the same after gives the
	// same answer, and it is safe for concurrent use.
	Next(after time.Time) time.Time
	// String describes the schedule for people ("every 1h", "cron */15 * * * *", "manual").
	String() string
}

// Parse turns a sync's `schedule:` into a Schedule. Both fields empty is Manual; `every`
// must be at least MinEvery; `cron` is a standard 5-field expression (or a descriptor
// such as @hourly), always read in UTC. The error names the offending field.
func Parse(s config.Schedule) (Schedule, error) {
	switch {
	case s.Every != 0 && s.Cron != "":
		return nil, errors.New("set either every or cron, not both")
	case s.Every == 0 && s.Cron == "":
		if !s.Start.IsZero() {
			return nil, errors.New("start: only applies to every, which is not set")
		}
		return Manual{}, nil
	case s.Every != 0:
		if s.Every < MinEvery {
			return nil, fmt.Errorf("every: %s is shorter than the minimum %s", s.Every, MinEvery)
		}
		return Every{Interval: s.Every, Start: s.Start}, nil
	default:
		if !s.Start.IsZero() {
			return nil, errors.New("start: only applies to every, not to cron")
		}
		c, err := ParseCron(s.Cron)
		if err != nil {
			return nil, fmt.Errorf("cron: %w", err)
		}
		return c, nil
	}
}

// Manual is the schedule of a sync without `schedule:`: it runs only when asked
// (POST /syncs/{name}/run).
type Manual struct{}

// Next is always the zero time: a manual sync is never started by the scheduler.
func (Manual) Next(time.Time) time.Time { return time.Time{} }

func (Manual) String() string { return "manual" }

// Every runs a sync at Start + k*Interval (k = 0, 1, 2, …).
//
// With a zero Start the anchor is the Unix epoch (1970-01-01T00:00:00Z): the runs fall
// on the multiples of Interval since then (every 1h on the hour, every 15m at :00,
// :15, :30 and :45 UTC), and the first run is the first such time after `serve`
// starts. The due times depend on nothing but the config, so every replica of `serve`
// sharing a state computes the same ones, and a restart does not move them.
type Every struct {
	Interval time.Duration
	Start    time.Time
}

// epoch is the anchor of an Every without Start.
var epoch = time.Unix(0, 0).UTC()

// chunk bounds the span Next measures with one time.Duration (which saturates at about
// 292 years): an anchor further away is first moved forward by whole intervals.
const chunk = time.Duration(1 << 62)

// Next returns the first Start + k*Interval strictly after after (Start itself when
// after is before it; the Unix epoch stands for a zero Start), in UTC.
func (e Every) Next(after time.Time) time.Time {
	iv := e.Interval
	if iv <= 0 {
		return time.Time{} // not produced by Parse; never fire rather than spin
	}
	start := e.Start
	if start.IsZero() {
		start = epoch
	}
	if after.Before(start) {
		return start.UTC()
	}
	// Move the anchor forward by whole intervals while the gap does not fit in a
	// Duration, so the arithmetic below can neither saturate nor overflow.
	step := chunk / iv * iv
	if step == 0 { // an interval longer than chunk
		step = iv
	}
	for after.Sub(start) >= chunk {
		start = start.Add(step)
	}
	t := start
	if !t.After(after) {
		t = start.Add((after.Sub(start)/iv + 1) * iv)
	}
	for !t.After(after) { // defensive: Next must move forward
		t = t.Add(iv)
	}
	return t.UTC()
}

func (e Every) String() string {
	s := "every " + shortDuration(e.Interval)
	if !e.Start.IsZero() {
		s += " from " + e.Start.UTC().Format(time.RFC3339)
	}
	return s
}

// shortDuration writes 1h instead of time.Duration's 1h0m0s.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// Cron is a standard 5-field cron expression evaluated in UTC.
type Cron struct {
	expr  string
	sched cron.Schedule
}

// ParseCron parses a cron expression with the rules config validation uses too
// (cronspec.Parse): 5 fields or a descriptor, UTC, no @every, one that fires.
func ParseCron(expr string) (Cron, error) {
	s, err := cronspec.Parse(expr)
	if err != nil {
		return Cron{}, err
	}
	return Cron{expr: strings.TrimSpace(expr), sched: s}, nil
}

// Next returns the first time after after that matches the expression, read in UTC,
// or the zero time when none does within five years.
func (c Cron) Next(after time.Time) time.Time {
	if c.sched == nil {
		return time.Time{}
	}
	// robfig/cron reads a spec without a zone in the zone of its argument: hand it UTC.
	t := c.sched.Next(after.UTC())
	if t.IsZero() {
		return t
	}
	return t.UTC()
}

func (c Cron) String() string { return "cron " + c.expr }
