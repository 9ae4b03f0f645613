package all_test

import (
	"context"
	"path/filepath"
	"slices"
	"testing"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/destinations"
	"github.com/backflowhq/backflow/destinations/all"
	"github.com/backflowhq/backflow/destinations/destinationstest"
	"github.com/backflowhq/backflow/destinations/file"
)

func TestRegistryHasEveryType(t *testing.T) {
	r := all.Registry()
	for _, typ := range []string{"file", "s3", "segment", "stdout", "webhook"} {
		if !slices.Contains(r.Types(), typ) {
			t.Errorf("Types = %v, want %s among them", r.Types(), typ)
		}
	}
	for _, typ := range r.Types() {
		k, ok := r.Kind(typ)
		if !ok || k.NewOptions == nil || k.MaxInFlight < 1 || k.BatchSize < 1 {
			t.Errorf("kind %s: %+v, want options and positive defaults", typ, k)
		}
	}
}

func TestRegistryBuildsWrappedDestinations(t *testing.T) {
	path := filepath.Join(t.TempDir(), "out.jsonl")
	d, err := all.Registry().New(context.Background(), config.Destination{Type: "file", Name: "file", Options: &file.Options{Path: path}}, destinations.Env{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := d.(destinations.Checker); !ok {
		t.Error("the file destination lost Check through the wrapper")
	}
	msgs := destinationstest.Messages("all", 3)
	if err := d.Write(context.Background(), msgs); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := (destinationstest.FileReceiver{Path: path}).Received(); len(got) != 3 {
		t.Errorf("%d lines written, want 3", len(got))
	}
}
