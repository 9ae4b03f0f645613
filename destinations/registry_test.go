package destinations

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/backflowhq/backflow/config"
)

// testOptions are options with one key.
type testOptions struct {
	Host string `mapstructure:"host"`
}

func (*testOptions) Prepare(*config.OptionsCheck) {}

func testKind(typ string, f Factory) Kind {
	return Kind{Type: typ, Kind: config.Kind{MaxInFlight: 2, BatchSize: 10, NewOptions: func() config.Options { return &testOptions{} }}, New: f}
}

func TestRegistry(t *testing.T) {
	r := NewRegistry()
	var got config.Destination
	var gotEnv Env
	r.Register(testKind("b", func(_ context.Context, cfg config.Destination, env Env) (Destination, error) {
		got, gotEnv = cfg, env
		if _, err := OptionsOf[*testOptions](cfg); err != nil {
			return nil, err
		}
		return &checkerDest{}, nil
	}))
	r.Register(testKind("a", func(context.Context, config.Destination, Env) (Destination, error) {
		return nil, errors.New("bad settings")
	}))
	if k, ok := r.Kind("b"); !ok || k.MaxInFlight != 2 || k.BatchSize != 10 {
		t.Errorf("Kind(b) = %+v, %v", k, ok)
	}
	if _, ok := r.Kind("c"); ok {
		t.Error("Kind(c) found a kind")
	}
	if types := r.Types(); !slices.Equal(types, []string{"a", "b"}) {
		t.Errorf("Types = %v", types)
	}

	if _, err := r.New(context.Background(), config.Destination{Type: "b", Name: "bee"}, Env{}); err == nil || !strings.Contains(err.Error(), "destination bee has no b options") {
		t.Errorf("New without options: %v", err)
	}
	d, err := r.New(context.Background(), config.Destination{Type: "b", Name: "bee", Options: &testOptions{}}, Env{Sync: "users"})
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
	r.Register(testKind("x", f))
	defer func() {
		if recover() == nil {
			t.Error("registering a type twice did not panic")
		}
	}()
	r.Register(testKind("x", f))
}
