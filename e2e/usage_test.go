package e2e

import (
	"strings"
	"testing"

	"github.com/backflowhq/backflow/internal/exampledata"
)

// A wrong command line is a usage error: exit 2 and one line saying what is wrong.
func TestUsageErrorsExit2(t *testing.T) {
	w := newWorkspace(t)
	w.writeUsers("", exampledata.Options{Files: 1, RowsPerFile: 10})
	w.writeConfig(usersConfig(fileDest("out/users.jsonl")))
	for _, args := range [][]string{
		{"bogus"},
		{"sync", "extra"},
		{"state", "bogus"},
		{"state"},
		{"check", "--log-level", "loud"},
		{"preview", "--log-format", "xml"},
		{"sync", "--no-such-flag"},
		{"preview", "-n", "0"},
	} {
		r := w.run(args...)
		if r.Code != 2 || len(r.errorLines()) != 1 {
			t.Errorf("%v: exit %d with error lines %q, want exit 2 and one line\n%s", args, r.Code, r.errorLines(), r)
		}
	}
}

// check reads the first footer, so it also catches a mapping that names a missing column.
func TestCheckValidatesTheMappingAgainstTheSchema(t *testing.T) {
	w := newWorkspace(t)
	w.writeUsers("", exampledata.Options{Files: 1, RowsPerFile: 10})
	c := usersConfig(fileDest("out/users.jsonl"))
	c.Syncs[0].Mapping["columns"] = []string{"email", "no_such_column"}
	w.writeConfig(c)
	r := w.run("check")
	if r.Code != 2 || !strings.Contains(r.Stdout, "no_such_column") {
		t.Fatalf("check with a mapping naming a missing column: want exit 2 naming it\n%s", r)
	}
}
