package testutil_test

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/backflowhq/backflow/internal/testutil"
)

func TestPostgres(t *testing.T) {
	p := testutil.StartPostgres(t)
	db := p.NewDatabase(t)
	p.Exec(t, db, "CREATE TABLE x (a int); INSERT INTO x VALUES (42)")
	bin, _ := testutil.PostgresBin()
	out, err := exec.Command(filepath.Join(bin, "psql"), "-X", "-At", "-d", p.AdminURL(db), "-c", "SELECT a FROM x").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "42" {
		t.Fatalf("reading back: %v %s", err, out)
	}
	// A wrong password is refused: the server checks passwords over TCP.
	out, err = exec.Command(filepath.Join(bin, "psql"), "-X", "-At", "-d", p.URL(testutil.PostgresUser, "wrong", db), "-c", "SELECT 1").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "password authentication failed") {
		t.Errorf("a wrong password: %v %s", err, out)
	}
}
