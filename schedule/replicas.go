package schedule

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/backflowhq/backflow/state"
)

// Several `serve` processes may share one s3:// state (replicas). Every replica
// computes the same due times (Every is anchored at the epoch, cron is wall-clock) and
// attempts every due run; the sync's lease lets one through at a time. Two more rules
// make each slot run exactly once:
//
//   - a run that holds the lease first reads the newest stored report: when it already
//     names this slot (or a later one), another replica ran it, and this run stops
//     before listing anything (slotRanError);
//   - the lease is released only once the run's report is in the stored history, so
//     the next holder of the lease always sees the report of the previous one.
//
// Both happen in runStore, the state.Store the pipeline is handed for the server's runs
// (Server.RunStore): the pipeline takes and releases the lease as for any run.

// ErrSlotRan is matched (errors.Is) by the error of a scheduled run whose slot was
// already run by another replica sharing the state: the run read and sent nothing and
// is not recorded.
var ErrSlotRan = errors.New("the schedule slot already ran")

// slotRanError names the run that ran the slot.
type slotRanError struct {
	sync  string
	slot  time.Time
	runID string // the stored run for that slot (or a later one)
}

func (e *slotRanError) Error() string {
	return fmt.Sprintf("sync %s: the run of %s already ran (run %s)", e.sync, e.slot.UTC().Format(time.RFC3339), e.runID)
}

func (e *slotRanError) Is(target error) bool { return target == ErrSlotRan }

// historyReadTimeout bounds reading the stored history before a scheduled run.
const historyReadTimeout = 30 * time.Second

// runControl is what the server's runStore knows of one run it started: found through
// the run's context.
type runControl struct {
	s   *Server
	st  *syncState
	cur *current

	mu      sync.Mutex
	started bool          // the run holds the lease and goes on: run.started was sent
	leases  []state.Lease // taken by the run; released once its report is recorded
}

type runControlKey struct{}

func withRunControl(ctx context.Context, c *runControl) context.Context {
	return context.WithValue(ctx, runControlKey{}, c)
}

func runControlOf(ctx context.Context) *runControl {
	c, _ := ctx.Value(runControlKey{}).(*runControl)
	return c
}

// RunStore is the state store to hand the pipeline for the runs this server starts
// (Options.Store with the server's part of the lease, see above); nil without a store.
// A RunFunc that uses another store still runs, but a replica may then run a slot
// another one already ran, and run.started is only sent when the run returns.
func (s *Server) RunStore() state.Store {
	if s.store == nil {
		return nil
	}
	return runStore{Store: s.store}
}

// runStore is the server's store with its Acquire: stateless, it finds the run by its
// context, so one value serves every run.
type runStore struct{ state.Store }

func (r runStore) Acquire(ctx context.Context, sync string, holder state.Holder, ttl time.Duration) (state.Lease, error) {
	c := runControlOf(ctx)
	lease, err := r.Store.Acquire(ctx, sync, holder, ttl)
	if err != nil || c == nil {
		return lease, err
	}
	if err := c.admit(ctx); err != nil {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), historyReadTimeout)
		defer cancel()
		if rerr := lease.Release(rctx); rerr != nil {
			c.s.log.Warn("releasing the sync's lease; it expires by itself", "sync", sync, "error", rerr)
		}
		return nil, err
	}
	c.mu.Lock()
	c.leases = append(c.leases, lease)
	c.mu.Unlock()
	return heldLease{lease}, nil
}

// heldLease is a lease whose Release waits for the server: the pipeline's Release is
// a no-op, and the server releases it once the run's report is stored.
type heldLease struct{ state.Lease }

func (heldLease) Release(context.Context) error { return nil }

// admit decides, with the lease held, whether the run goes on: a scheduled run whose
// slot the stored history already has is refused. A run that goes on is started.
func (c *runControl) admit(ctx context.Context) error {
	c.mu.Lock()
	started := c.started
	c.mu.Unlock()
	if started { // a second lease of the same run (several shards): decided already
		return nil
	}
	if slot := c.cur.slot; !slot.IsZero() && c.s.store != nil {
		hctx, cancel := context.WithTimeout(ctx, historyReadTimeout)
		raw, err := c.s.store.History(hctx, c.st.name)
		cancel()
		if err != nil {
			return fmt.Errorf("reading the run history of sync %s to see whether the run of %s already ran: %w",
				c.st.name, slot.UTC().Format(time.RFC3339), err)
		}
		if ran, runID := slotTaken(raw, slot); ran {
			return &slotRanError{sync: c.st.name, slot: slot, runID: runID}
		}
	}
	c.start()
	return nil
}

// slotTaken reports whether a stored report is for slot or a later one (a replica that
// woke up late must not run an older slot after a newer one ran), and its run id.
func slotTaken(history [][]byte, slot time.Time) (bool, string) {
	for _, b := range history {
		var head struct {
			RunID        string    `json:"run_id"`
			ScheduledFor time.Time `json:"scheduled_for"`
		}
		if json.Unmarshal(b, &head) != nil || head.ScheduledFor.IsZero() {
			continue
		}
		if !head.ScheduledFor.Before(slot) {
			return true, head.RunID
		}
	}
	return false, ""
}

// start tells that the run really starts (it holds the lease): logged, and run.started
// sent. Once per run.
func (c *runControl) start() {
	c.mu.Lock()
	if c.started {
		c.mu.Unlock()
		return
	}
	c.started = true
	c.mu.Unlock()
	log := c.s.log.With("sync", c.st.name, "run_id", c.cur.id)
	if c.cur.slot.IsZero() {
		log.Info("run started", "trigger", c.cur.trigger, "full", c.cur.full)
	} else {
		log.Info("run started", "trigger", c.cur.trigger, "full", c.cur.full, "scheduled_for", c.cur.slot.UTC())
	}
	c.s.notify.Started(c.st.name, c.cur.id)
}

func (c *runControl) hasStarted() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.started
}

// release gives up the leases the run took, once its report is recorded (or will not
// be). A failed release is logged: an s3:// lease then expires by itself.
func (c *runControl) release(ctx context.Context) {
	c.mu.Lock()
	leases := c.leases
	c.leases = nil
	c.mu.Unlock()
	for _, l := range leases {
		rctx, cancel := context.WithTimeout(ctx, historyTimeout)
		if err := l.Release(rctx); err != nil {
			c.s.log.Warn("releasing the sync's lease; it expires by itself", "sync", c.st.name, "run_id", c.cur.id, "error", err)
		}
		cancel()
	}
}

// elsewhere reports whether the run did not run here because another replica runs
// (or ran) it, and logs it at info: nothing is recorded and nothing notified, the
// replica that runs it does both.
func (c *runControl) elsewhere(err error) bool {
	if err == nil || c.hasStarted() {
		return false
	}
	what := "the run requested by " + c.cur.trigger
	if !c.cur.slot.IsZero() {
		what = "the run of " + c.cur.slot.UTC().Format(time.RFC3339)
	}
	var held *state.LeaseHeldError
	var ran *slotRanError
	switch {
	case errors.As(err, &held):
		h := held.Holder
		c.s.log.Info(fmt.Sprintf("sync %s: %s runs elsewhere (host %s, pid %d, run %s)", c.st.name, what, h.Host, h.PID, h.RunID),
			"sync", c.st.name, "run_id", c.cur.id, "holder_host", h.Host, "holder_run_id", h.RunID)
	case errors.As(err, &ran):
		c.s.log.Info(fmt.Sprintf("sync %s: %s ran elsewhere (run %s)", c.st.name, what, ran.runID),
			"sync", c.st.name, "run_id", c.cur.id, "ran_as", ran.runID)
	default:
		return false
	}
	c.s.metrics.elsewhere.WithLabelValues(c.st.name).Inc()
	return true
}

// leaseHolder reads who holds the sync's lease, in any replica; nil when nobody does
// or the store cannot tell.
func (s *Server) leaseHolder(ctx context.Context, sync string) *state.Holder {
	hr, ok := s.store.(state.HolderReader)
	if !ok {
		return nil
	}
	h, err := hr.Holder(ctx, sync)
	if err != nil {
		s.log.Warn("reading the sync's lease holder", "sync", sync, "store", s.store.String(), "error", err)
		return nil
	}
	return h
}
