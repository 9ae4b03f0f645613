package pipeline

import (
	"os"
	"testing"

	"github.com/backflowhq/backflow/internal/testutil"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testutil.StopMinIO()
	os.Exit(code)
}
