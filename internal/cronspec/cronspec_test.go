package cronspec

import (
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	for _, ok := range []string{"*/5 * * * *", "0 3 * * 1-5", "@daily", " @hourly "} {
		if _, err := Parse(ok); err != nil {
			t.Errorf("Parse(%q): %v", ok, err)
		}
	}
	for expr, want := range map[string]string{
		"":               "empty",
		"@every 5m":      "use `every:`",
		"0 0 30 2 *":     "no time matches",
		"TZ=UTC 0 * * *": "time-zone",
		"* * * *":        "expected exactly 5 fields",
		"61 * * * *":     "above maximum",
	} {
		if _, err := Parse(expr); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Parse(%q) = %v, want an error with %q", expr, err, want)
		}
	}
}
