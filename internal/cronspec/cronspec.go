// Package cronspec is the one parser of schedule.cron: configuration validation and
// serve's scheduler both call it, so that an expression `check` accepts is one `serve`
// runs.
package cronspec

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/robfig/cron/v3"
)

// parser is the standard crontab syntax: minute hour day-of-month month day-of-week,
// plus descriptors (@hourly, @daily, …).
var parser = cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// probe is the instant from which Parse checks that an expression ever fires.
var probe = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// Parse parses a 5-field cron expression (or @hourly, @daily, @weekly, @monthly,
// @yearly, @midnight), evaluated in UTC. Time-zone prefixes are refused: backflow's
// cron is UTC, so a schedule means the same on every machine. `@every` is refused too:
// that is what the `every` field is for. So is an expression that never fires
// ("0 0 30 2 *"). Errors quote the expression.
func Parse(expr string) (s cron.Schedule, err error) {
	expr = strings.TrimSpace(expr)
	switch {
	case expr == "":
		return nil, errors.New("empty expression")
	case strings.HasPrefix(expr, "TZ=") || strings.HasPrefix(expr, "CRON_TZ="):
		return nil, fmt.Errorf("%q: time-zone prefixes are not supported; cron expressions are in UTC", expr)
	case strings.HasPrefix(expr, "@every"):
		return nil, fmt.Errorf("%q: use `every:` for intervals", expr)
	}
	// The cron library has panicked on malformed input before; a config typo must be
	// an error, never a crash.
	defer func() {
		if r := recover(); r != nil {
			s, err = nil, fmt.Errorf("%q: invalid expression", expr)
		}
	}()
	s, err = parser.Parse(expr)
	if err != nil {
		return nil, fmt.Errorf("%q: %w", expr, err)
	}
	if s.Next(probe).IsZero() {
		return nil, fmt.Errorf("%q: no time matches it within five years", expr)
	}
	return s, nil
}
