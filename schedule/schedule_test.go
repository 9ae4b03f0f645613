package schedule

import (
	"strings"
	"testing"
	"time"

	"github.com/backflowhq/backflow/config"
)

func utc(s string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		panic(err)
	}
	return t
}

func TestParse(t *testing.T) {
	cases := []struct {
		in      config.Schedule
		want    string // String() of the result
		wantErr string
	}{
		{in: config.Schedule{}, want: "manual"},
		{in: config.Schedule{Every: time.Hour}, want: "every 1h"},
		{in: config.Schedule{Every: 90 * time.Minute}, want: "every 1h30m"},
		{in: config.Schedule{Every: 2 * time.Minute}, want: "every 2m"},
		{in: config.Schedule{Every: time.Second}, want: "every 1s"},
		{in: config.Schedule{Every: 1500 * time.Millisecond}, want: "every 1.5s"},
		{in: config.Schedule{Every: time.Hour, Start: utc("2025-01-01T00:30:00+02:00")}, want: "every 1h from 2024-12-31T22:30:00Z"},
		{in: config.Schedule{Cron: "*/15 * * * *"}, want: "cron */15 * * * *"},
		{in: config.Schedule{Cron: "  0 9 * * 1-5 "}, want: "cron 0 9 * * 1-5"},
		{in: config.Schedule{Cron: "@daily"}, want: "cron @daily"},

		{in: config.Schedule{Every: 999 * time.Millisecond}, wantErr: "every: 999ms is shorter than the minimum 1s"},
		{in: config.Schedule{Every: -time.Hour}, wantErr: "every: -1h0m0s is shorter"},
		{in: config.Schedule{Every: time.Hour, Cron: "* * * * *"}, wantErr: "either every or cron"},
		{in: config.Schedule{Start: utc("2025-01-01T00:00:00Z")}, wantErr: "start: only applies to every"},
		{in: config.Schedule{Cron: "0 * * * *", Start: utc("2025-01-01T00:00:00Z")}, wantErr: "start: only applies to every, not to cron"},
		{in: config.Schedule{Cron: "* * * *"}, wantErr: `cron: "* * * *": expected exactly 5 fields`},
		{in: config.Schedule{Cron: "0 0 * * * *"}, wantErr: "expected exactly 5 fields"},
		{in: config.Schedule{Cron: "61 * * * *"}, wantErr: "cron: \"61 * * * *\""},
		{in: config.Schedule{Cron: "0 0 30 2 *"}, wantErr: "no time matches it within five years"},
		{in: config.Schedule{Cron: "TZ=Europe/Oslo 0 9 * * *"}, wantErr: "time-zone prefixes are not supported"},
		{in: config.Schedule{Cron: "CRON_TZ=UTC"}, wantErr: "time-zone prefixes are not supported"},
		{in: config.Schedule{Cron: "@every 1m"}, wantErr: "use `every:` for intervals"},
		{in: config.Schedule{Cron: "@sometimes"}, wantErr: "unrecognized descriptor"},
		{in: config.Schedule{Cron: "   "}, wantErr: "cron: empty expression"},
	}
	for _, c := range cases {
		got, err := Parse(c.in)
		if c.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("Parse(%+v) error = %v, want one containing %q", c.in, err, c.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("Parse(%+v): %v", c.in, err)
			continue
		}
		if got.String() != c.want {
			t.Errorf("Parse(%+v).String() = %q, want %q", c.in, got.String(), c.want)
		}
	}
}

func TestManualNeverFires(t *testing.T) {
	if got := (Manual{}).Next(time.Now()); !got.IsZero() {
		t.Fatalf("Manual.Next = %v, want zero", got)
	}
}

func TestEveryNextAnchored(t *testing.T) {
	start := utc("2025-01-01T00:00:00Z")
	e := Every{Interval: time.Hour, Start: start}
	cases := []struct{ after, want string }{
		{"2024-12-31T23:59:00Z", "2025-01-01T00:00:00Z"}, // before the anchor: the anchor itself
		{"2020-01-01T00:00:00Z", "2025-01-01T00:00:00Z"},
		{"2025-01-01T00:00:00Z", "2025-01-01T01:00:00Z"}, // strictly after
		{"2025-01-01T00:00:00.000000001Z", "2025-01-01T01:00:00Z"},
		{"2025-01-01T01:30:00Z", "2025-01-01T02:00:00Z"},
		{"2025-01-01T01:59:59.999Z", "2025-01-01T02:00:00Z"},
		{"2025-06-30T13:00:00Z", "2025-06-30T14:00:00Z"},
		{"2025-06-30T14:30:00+02:00", "2025-06-30T13:00:00Z"}, // zones do not matter
	}
	for _, c := range cases {
		got := e.Next(utc(c.after))
		if !got.Equal(utc(c.want)) || got.Location() != time.UTC {
			t.Errorf("Next(%s) = %s, want %s (UTC)", c.after, got, c.want)
		}
	}

	// An anchor that is not on a round time keeps its phase.
	e = Every{Interval: 15 * time.Minute, Start: utc("2025-03-01T08:07:30Z")}
	if got, want := e.Next(utc("2025-03-02T10:00:00Z")), utc("2025-03-02T10:07:30Z"); !got.Equal(want) {
		t.Errorf("phase: Next = %s, want %s", got, want)
	}
}

func TestEveryNextUnanchored(t *testing.T) {
	// Without start the anchor is the Unix epoch: the same due times in every process,
	// whenever it started.
	e := Every{Interval: 10 * time.Second}
	if got, want := e.Next(utc("2025-01-01T00:00:03Z")), utc("2025-01-01T00:00:10Z"); !got.Equal(want) {
		t.Fatalf("Next = %s, want %s", got, want)
	}
	if got, want := e.Next(utc("2025-01-01T00:00:10Z")), utc("2025-01-01T00:00:20Z"); !got.Equal(want) {
		t.Fatalf("Next on a due time = %s, want %s", got, want)
	}
	h := Every{Interval: time.Hour}
	if got, want := h.Next(utc("2025-01-01T10:07:00Z")), utc("2025-01-01T11:00:00Z"); !got.Equal(want) {
		t.Fatalf("every 1h: Next = %s, want %s", got, want)
	}
	// 7m does not divide a day: the slots follow the epoch, not midnight.
	s := Every{Interval: 7 * time.Minute}
	after := utc("2025-01-01T00:00:00Z")
	got := s.Next(after)
	if got.Sub(epoch)%(7*time.Minute) != 0 || !got.After(after) || got.Sub(after) > 7*time.Minute {
		t.Fatalf("every 7m: Next(%s) = %s, not the next multiple of 7m since the epoch", after, got)
	}
}

// Anchors centuries away must neither overflow time.Duration nor lose the phase.
func TestEveryNextFarAnchor(t *testing.T) {
	after := utc("2025-05-05T05:05:05Z")
	cases := []Every{
		{Interval: time.Hour, Start: time.Date(1, 1, 2, 0, 0, 0, 0, time.UTC)},
		{Interval: time.Hour, Start: time.Date(1600, 1, 1, 0, 0, 0, 0, time.UTC)},
		{Interval: 7 * time.Second, Start: time.Date(1, 1, 2, 0, 0, 0, 0, time.UTC)},
		{Interval: 200 * 365 * 24 * time.Hour, Start: time.Date(1, 1, 2, 0, 0, 0, 0, time.UTC)}, // longer than 2^62ns
	}
	for _, e := range cases {
		got := e.Next(after)
		if !got.After(after) || got.Sub(after) > e.Interval {
			t.Errorf("%v from %s: Next(%s) = %s, not in (after, after+interval]", e.Interval, e.Start, after, got)
		}
		if e.Interval == time.Hour && (got.Minute() != 0 || got.Second() != 0) {
			t.Errorf("%v from %s: Next = %s lost the phase", e.Interval, e.Start, got)
		}
	}
}

func TestCronNext(t *testing.T) {
	cases := []struct{ expr, after, want string }{
		{"*/15 * * * *", "2025-04-14T10:07:00Z", "2025-04-14T10:15:00Z"},
		{"*/15 * * * *", "2025-04-14T10:15:00Z", "2025-04-14T10:30:00Z"}, // strictly after
		{"*/15 * * * *", "2025-04-14T23:59:59Z", "2025-04-15T00:00:00Z"},
		{"0 9 * * 1", "2025-04-14T09:00:00Z", "2025-04-21T09:00:00Z"}, // Monday 09:00
		{"30 2 1 * *", "2025-01-15T00:00:00Z", "2025-02-01T02:30:00Z"},
		{"0 0 29 2 *", "2025-01-01T00:00:00Z", "2028-02-29T00:00:00Z"},
		{"@hourly", "2025-04-14T10:07:00Z", "2025-04-14T11:00:00Z"},
		{"@daily", "2025-04-14T10:07:00Z", "2025-04-15T00:00:00Z"},
		// The expression is UTC whatever zone the argument is in.
		{"0 9 * * *", "2025-04-14T12:00:00+05:00", "2025-04-14T09:00:00Z"}, // 07:00 UTC
		{"0 9 * * *", "2025-04-14T08:00:00-05:00", "2025-04-15T09:00:00Z"},
	}
	for _, c := range cases {
		s, err := Parse(config.Schedule{Cron: c.expr})
		if err != nil {
			t.Fatalf("Parse(%q): %v", c.expr, err)
		}
		got := s.Next(utc(c.after))
		if !got.Equal(utc(c.want)) || got.Location() != time.UTC {
			t.Errorf("%q.Next(%s) = %s, want %s (UTC)", c.expr, c.after, got, c.want)
		}
	}
	// Repeated Next walks the schedule.
	s, _ := Parse(config.Schedule{Cron: "0 */6 * * *"})
	at := utc("2025-04-14T01:00:00Z")
	var got []string
	for range 4 {
		at = s.Next(at)
		got = append(got, at.Format("02T15"))
	}
	if strings.Join(got, ",") != "14T06,14T12,14T18,15T00" {
		t.Errorf("walk = %v", got)
	}
}

func FuzzParseCron(f *testing.F) {
	for _, s := range []string{"*/15 * * * *", "0 9 * * 1-5", "@daily", "0 0 30 2 *", "TZ=UTC", "CRON_TZ=",
		"1-5/2 */3 1,15 JAN-MAR MON", "? ? ? ? ?", "*/0 * * * *", "5-1 * * * *", "@every 1s", "0 0 L * *"} {
		f.Add(s)
	}
	probe := utc("2025-01-01T00:00:00Z")
	f.Fuzz(func(t *testing.T, expr string) {
		c, err := ParseCron(expr)
		if err != nil {
			return
		}
		if !strings.HasPrefix(c.String(), "cron ") {
			t.Fatalf("String() = %q", c.String())
		}
		if n := c.Next(probe); !n.IsZero() && !n.After(probe) {
			t.Fatalf("%q: Next(%s) = %s does not move forward", expr, probe, n)
		}
	})
}

func FuzzEveryNext(f *testing.F) {
	f.Add(int64(1735689600), int64(3600), int64(1746421505), int64(0))
	f.Add(int64(-62135596800), int64(7), int64(1746421505), int64(999))
	f.Add(int64(1746421505), int64(1), int64(1746421505), int64(0))
	f.Fuzz(func(t *testing.T, startSec, ivSec, afterSec, nanos int64) {
		// Keep to years 1..9999, intervals of 1s..250 years (time.Duration ends at 292).
		const lo, hi = -62135596800, 253402300799
		clamp := func(v int64) int64 { return lo + (v%(hi-lo)+(hi-lo))%(hi-lo) }
		const maxIv = 250 * 365 * 86400
		iv := time.Duration(1+(ivSec%maxIv+maxIv)%maxIv) * time.Second
		start := time.Unix(clamp(startSec), 0).UTC()
		after := time.Unix(clamp(afterSec), (nanos%1e9+1e9)%1e9).UTC()
		got := Every{Interval: iv, Start: start}.Next(after)
		if after.Before(start) {
			if !got.Equal(start) {
				t.Fatalf("Next(%s) before start %s = %s", after, start, got)
			}
			return
		}
		if !got.After(after) || got.Sub(after) > iv {
			t.Fatalf("start %s every %s: Next(%s) = %s", start, iv, after, got)
		}
	})
}

func TestEveryStringKeepsConfigForm(t *testing.T) {
	if e := (Every{Interval: time.Hour}); e.String() != "every 1h" {
		t.Fatalf("String = %q, want every 1h", e.String())
	}
}
