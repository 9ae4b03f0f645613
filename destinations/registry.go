package destinations

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/mapper"
)

// Env is what a factory may use besides the destination's own config.
type Env struct {
	Sync       string    // the sync's name
	RunID      string    // the run's id
	RunStarted time.Time // when the run started (UTC)
	Version    string    // backflow's version, for User-Agent and context.library
	Stdout     io.Writer // where the stdout destination writes
	Logger     *slog.Logger
	// Stop, when set, is closed when the run begins to stop (a signal, or a failure
	// that ends it): failed requests are not retried after it.
	Stop <-chan struct{}
}

// Factory builds one destination from its validated config. It does no network I/O
// beyond what is needed to construct clients.
type Factory func(ctx context.Context, cfg config.Destination, env Env) (Destination, error)

// Deferred is implemented by destinations whose accepted writes become durable later
// than Write returns: the s3 destination's messages are durable once the object holding
// them is completed. The pipeline calls WriteDeferred instead of Write for them, and
// counts a message as delivered only when it is durable, so that nothing waits for the
// end of the run and a failure or a kill resends only what was not durable.
type Deferred interface {
	// WriteDeferred accepts msgs. nil, or a *BatchError whose Failed messages are
	// refused for good, means the other messages were accepted: durable is then called
	// exactly once — from any goroutine, possibly before WriteDeferred returns — when
	// every accepted message of msgs is durable (at once when none was accepted). Any
	// other error means nothing of msgs was accepted, and durable is never called.
	// Messages accepted earlier whose object is lost (an aborted upload) never get
	// their durable call, and every later call fails.
	//
	// It may be called concurrently (max_in_flight); the destination serializes.
	WriteDeferred(ctx context.Context, msgs []mapper.Message, durable func()) error
	// Flush makes every accepted message durable (the s3 destination completes its
	// open object) and returns nil only after their durable funcs were called. The
	// pipeline calls it when reading ends, and when a run stops gracefully.
	Flush(ctx context.Context) error
	// DurableUnit is how many messages at most become durable together (the s3
	// destination's max_object_rows; 0: no bound). The pipeline keeps its batches
	// within it, so that a completed unit is counted without waiting for the next.
	DurableUnit() int
}

// Kind is one destination type: its name, its defaults and options (config.Kind, which
// the configuration loader uses), and its factory. Each destination package returns its
// own from a function named Kind, and package destinations/all registers them all.
type Kind struct {
	Type string
	config.Kind
	New Factory
}

// OptionsOf returns cfg's options as T: the type's options struct that the
// configuration loader decoded and prepared, or that a caller building cfg by hand set.
// Options of another type, or none, are an error naming the destination.
func OptionsOf[T config.Options](cfg config.Destination) (T, error) {
	o, ok := cfg.Options.(T)
	if !ok {
		var zero T
		return zero, fmt.Errorf("destination %s has no %s options (%T)", cmp.Or(cfg.Name, cfg.Type), cmp.Or(cfg.Type, "typed"), cfg.Options)
	}
	return o, nil
}

// Registry maps destination types to their kinds. Registration is explicit, in one
// place (package destinations/all), as restic registers its backends: no init() magic.
// It implements config.Kinds.
type Registry struct {
	kinds map[string]Kind
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry {
	return &Registry{kinds: map[string]Kind{}}
}

// Register adds a kind. Registering a type twice, an empty type, or a kind without a
// factory or options is a programmer error: it panics.
func (r *Registry) Register(k Kind) {
	if k.Type == "" || k.New == nil || k.NewOptions == nil {
		panic("destinations: Register needs a type, a factory and options")
	}
	if _, dup := r.kinds[k.Type]; dup {
		panic(fmt.Sprintf("destinations: type %q registered twice", k.Type))
	}
	r.kinds[k.Type] = k
}

// Types returns the registered types, sorted.
func (r *Registry) Types() []string {
	return slices.Sorted(maps.Keys(r.kinds))
}

// Kind returns what the configuration needs of typ (config.Kinds).
func (r *Registry) Kind(typ string) (config.Kind, bool) {
	k, ok := r.kinds[typ]
	return k.Kind, ok
}

// New builds the destination cfg describes and wraps it (see Wrap) with its retry,
// rate-limit, timeout and splitting settings. env.Logger may be nil.
func (r *Registry) New(ctx context.Context, cfg config.Destination, env Env) (Destination, error) {
	k, ok := r.kinds[cfg.Type]
	if !ok {
		return nil, fmt.Errorf("unknown destination type %q (known: %s)", cfg.Type, strings.Join(r.Types(), ", "))
	}
	if env.Logger == nil {
		env.Logger = slog.New(slog.DiscardHandler)
	}
	d, err := k.New(ctx, cfg, env)
	if err != nil {
		return nil, fmt.Errorf("creating %s destination: %w", cfg.Type, err)
	}
	return wrap(d, cfg, env.Logger, env.Stop), nil
}
