package file_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/destinations"
	"github.com/backflowhq/backflow/destinations/destinationstest"
	"github.com/backflowhq/backflow/destinations/file"
	"github.com/backflowhq/backflow/mapper"
)

func build(t *testing.T, path string) destinations.Destination {
	t.Helper()
	r := destinations.NewRegistry()
	r.Register(file.Kind())
	d, err := r.New(context.Background(), config.Destination{
		Type: file.Type, Name: "file", Options: &file.Options{Path: path}, BatchSize: 1000,
		Retry: config.Retry{MaxAttempts: 3, MaxBackoff: 50 * time.Millisecond}, Timeout: 10 * time.Second,
	}, destinations.Env{})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestSuite(t *testing.T) {
	destinationstest.RunSuite(t, func(t *testing.T) (destinations.Destination, destinationstest.Receiver) {
		path := filepath.Join(t.TempDir(), "nested", "dir", "out.jsonl")
		return build(t, path), destinationstest.FileReceiver{Path: path}
	})
}

func TestAppendsToExistingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "out.jsonl")
	if err := os.WriteFile(path, []byte(`{"messageId":"old"}`+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	d := build(t, path)
	msgs := destinationstest.Messages("append", 3)
	if err := d.Write(context.Background(), msgs); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	got := destinationstest.FileReceiver{Path: path}.Received()
	if len(got) != 4 || got[0].ID != "old" || got[3].ID != msgs[2].ID {
		t.Fatalf("file holds %d lines: %+v", len(got), got)
	}
	if err := d.Write(context.Background(), msgs); !errors.Is(err, destinations.ErrClosed) {
		t.Errorf("Write after Close = %v, want ErrClosed", err)
	}
}

func TestRefusesMessagesThatAreNotOneLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "out.jsonl")
	d := build(t, path)
	defer d.Close(context.Background())
	msgs := destinationstest.Messages("lines", 3)
	msgs[1] = mapper.Message{ID: "broken", JSON: []byte("{\"a\":\n1}")}
	err := d.Write(context.Background(), msgs)
	var be *destinations.BatchError
	if !errors.As(err, &be) || len(be.Failed) != 1 || be.Failed[0].Index != 1 {
		t.Fatalf("Write = %v, want message 1 refused", err)
	}
	got := destinationstest.FileReceiver{Path: path}.Received()
	if len(got) != 2 || got[0].ID != msgs[0].ID || got[1].ID != msgs[2].ID {
		t.Errorf("file holds %+v", got)
	}
}

func TestCheck(t *testing.T) {
	dir := t.TempDir()
	check := func(path string) error {
		d, err := file.New(context.Background(), config.Destination{Options: &file.Options{Path: path}}, destinations.Env{})
		if err != nil {
			t.Fatal(err)
		}
		return d.(destinations.Checker).Check(context.Background())
	}
	missing := filepath.Join(dir, "a", "b", "out.jsonl")
	if err := check(missing); err != nil {
		t.Errorf("Check of a file in directories still to create: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "a")); !errors.Is(err, os.ErrNotExist) {
		t.Error("Check created something")
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("Check left %d entries behind", len(entries))
	}
	if err := check(dir); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("Check of a directory: %v", err)
	}
	blocker := filepath.Join(dir, "plain")
	os.WriteFile(blocker, nil, 0o644)
	if err := check(filepath.Join(blocker, "out.jsonl")); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("Check below a regular file: %v", err)
	}
	if _, err := file.New(context.Background(), config.Destination{Options: &file.Options{}}, destinations.Env{}); err == nil {
		t.Error("New without a path succeeded")
	}
}

func TestWriteFailsWhenParentIsAFile(t *testing.T) {
	dir := t.TempDir()
	blocker := filepath.Join(dir, "plain")
	os.WriteFile(blocker, nil, 0o644)
	d := build(t, filepath.Join(blocker, "out.jsonl"))
	defer d.Close(context.Background())
	err := d.Write(context.Background(), destinationstest.Messages("x", 1))
	if err == nil || destinations.IsRetryable(err) || !strings.Contains(err.Error(), blocker) {
		t.Errorf("Write = %v, want a permanent error naming the path", err)
	}
}
