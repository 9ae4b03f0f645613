package destinations

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/backflowhq/backflow/config"
)

func TestRegistry(t *testing.T) {
	r := NewRegistry()
	var got config.Destination
	var gotEnv Env
	r.Register("b", func(_ context.Context, cfg config.Destination, env Env) (Destination, error) {
		got, gotEnv = cfg, env
		return &checkerDest{}, nil
	})
	r.Register("a", func(context.Context, config.Destination, Env) (Destination, error) {
		return nil, errors.New("bad settings")
	})
	if types := r.Types(); !slices.Equal(types, []string{"a", "b"}) {
		t.Errorf("Types = %v", types)
	}

	d, err := r.New(context.Background(), config.Destination{Type: "b", Name: "bee"}, Env{Sync: "users"})
	if err != nil {
		t.Fatal(err)
	}
	if got.Name != "bee" || gotEnv.Sync != "users" {
		t.Errorf("the factory got %+v, %+v", got, gotEnv)
	}
	if _, ok := d.(interface{ Unwrap() Destination }); !ok {
		t.Error("New did not wrap the destination")
	}
	if _, ok := d.(Checker); !ok {
		t.Error("the wrapped destination lost Check")
	}

	if _, err := r.New(context.Background(), config.Destination{Type: "a"}, Env{}); err == nil || !strings.Contains(err.Error(), "bad settings") {
		t.Errorf("factory error: %v", err)
	}
	if _, err := r.New(context.Background(), config.Destination{Type: "kafka"}, Env{}); err == nil ||
		!strings.Contains(err.Error(), `"kafka"`) || !strings.Contains(err.Error(), "a, b") {
		t.Errorf("unknown type: %v", err)
	}
}

func TestRegisterTwicePanics(t *testing.T) {
	r := NewRegistry()
	f := func(context.Context, config.Destination, Env) (Destination, error) { return nil, nil }
	r.Register("x", f)
	defer func() {
		if recover() == nil {
			t.Error("registering a type twice did not panic")
		}
	}()
	r.Register("x", f)
}
