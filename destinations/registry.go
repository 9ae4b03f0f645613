package destinations

import (
	"context"
	"io"
	"log/slog"
	"time"

	"github.com/backflowhq/backflow/config"
)

// Env is what a factory may use besides the destination's own config.
type Env struct {
	Sync       string    // the sync's name
	RunID      string    // the run's id
	RunStarted time.Time // when the run started (UTC)
	Version    string    // backflow's version, for User-Agent and context.library
	Stdout     io.Writer // where the stdout destination writes
	Logger     *slog.Logger
}

// Factory builds one destination from its validated config. It does no network I/O
// beyond what is needed to construct clients.
type Factory func(ctx context.Context, cfg config.Destination, env Env) (Destination, error)

// Committer is implemented by destinations whose writes become durable only in groups
// (the s3 destination completes an object). For them Write returning nil means the
// messages were accepted, and they are acknowledged only when a later Commit returns nil.
// The pipeline calls Commit at the end of a run and before a graceful stop.
type Committer interface {
	Commit(ctx context.Context) error
}
