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
)

func TestRegistryHasEveryType(t *testing.T) {
	want := []string{config.DestFile, config.DestS3, config.DestSegment, config.DestStdout, config.DestWebhook}
	if got := all.Registry().Types(); !slices.Equal(got, want) {
		t.Errorf("Types = %v, want %v", got, want)
	}
}

func TestRegistryBuildsWrappedDestinations(t *testing.T) {
	path := filepath.Join(t.TempDir(), "out.jsonl")
	d, err := all.Registry().New(context.Background(), config.Destination{Type: config.DestFile, Name: "file", Path: path}, destinations.Env{})
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
