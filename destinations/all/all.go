// Package all registers every destination type backflow ships, in one place, as restic's
// backend/all does: adding a destination is one line here (and its own folder).
package all

import (
	"github.com/backflowhq/backflow/destinations"
	"github.com/backflowhq/backflow/destinations/file"
	"github.com/backflowhq/backflow/destinations/postgres"
	"github.com/backflowhq/backflow/destinations/s3"
	"github.com/backflowhq/backflow/destinations/segment"
	"github.com/backflowhq/backflow/destinations/stdout"
	"github.com/backflowhq/backflow/destinations/webhook"
)

// Registry returns a registry of every destination type.
func Registry() *destinations.Registry {
	r := destinations.NewRegistry()
	r.Register(file.Kind())
	r.Register(postgres.Kind())
	r.Register(s3.Kind())
	r.Register(segment.Kind())
	r.Register(stdout.Kind())
	r.Register(webhook.Kind())
	return r
}
