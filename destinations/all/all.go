// Package all registers every destination type backflow ships, in one place, as restic's
// backend/all does: adding a destination is one line here.
package all

import (
	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/destinations"
	"github.com/backflowhq/backflow/destinations/file"
	"github.com/backflowhq/backflow/destinations/s3"
	"github.com/backflowhq/backflow/destinations/segment"
	"github.com/backflowhq/backflow/destinations/stdout"
	"github.com/backflowhq/backflow/destinations/webhook"
)

// Registry returns a registry of every destination type: segment, webhook, file, stdout
// and s3.
func Registry() *destinations.Registry {
	r := destinations.NewRegistry()
	r.Register(config.DestSegment, segment.New)
	r.Register(config.DestWebhook, webhook.New)
	r.Register(config.DestFile, file.New)
	r.Register(config.DestStdout, stdout.New)
	r.Register(config.DestS3, s3.New)
	return r
}
