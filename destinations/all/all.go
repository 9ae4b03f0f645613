// Package all registers every destination type backflow ships, in one place, as restic's
// backend/all does: adding a destination is one line here (and its own folder).
package all

import (
	"github.com/backflowhq/backflow/destinations"
	"github.com/backflowhq/backflow/destinations/amplitude"
	"github.com/backflowhq/backflow/destinations/braze"
	"github.com/backflowhq/backflow/destinations/file"
	"github.com/backflowhq/backflow/destinations/kafka"
	"github.com/backflowhq/backflow/destinations/mixpanel"
	"github.com/backflowhq/backflow/destinations/postgres"
	"github.com/backflowhq/backflow/destinations/rudderstack"
	"github.com/backflowhq/backflow/destinations/s3"
	"github.com/backflowhq/backflow/destinations/segment"
	"github.com/backflowhq/backflow/destinations/stdout"
	"github.com/backflowhq/backflow/destinations/webhook"
)

// Registry returns a registry of every destination type.
func Registry() *destinations.Registry {
	r := destinations.NewRegistry()
	r.Register(amplitude.Kind())
	r.Register(braze.Kind())
	r.Register(file.Kind())
	r.Register(kafka.Kind())
	r.Register(mixpanel.Kind())
	r.Register(postgres.Kind())
	r.Register(rudderstack.Kind())
	r.Register(s3.Kind())
	r.Register(segment.Kind())
	r.Register(stdout.Kind())
	r.Register(webhook.Kind())
	return r
}
