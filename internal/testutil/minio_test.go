package testutil_test

import (
	"os"
	"testing"

	"github.com/backflowhq/backflow/internal/testutil"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testutil.StopMinIO()
	testutil.StopPostgres()
	os.Exit(code)
}

func TestMinIOStarts(t *testing.T) {
	m := testutil.StartMinIO(t)
	b := m.Bucket(t)
	m.Put(t, b, "a/b.txt", []byte("hi"))
	if got := string(m.Get(t, b, "a/b.txt")); got != "hi" {
		t.Fatalf("got %q", got)
	}
}
