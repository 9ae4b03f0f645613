package pipeline

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/backflowhq/backflow/state"
)

// saver writes the ledger's snapshots: a group commit. As soon as a save ended and the
// ledger changed, it saves again — so a killed run resends only the batches that were
// in flight, or acknowledged while a save was under way. Each save makes the rejects
// file durable after taking the snapshot and before writing it: every reject the
// snapshot counts was handed to the rejects writer before it was counted (the ledger's
// contract), so it is in the flush. It never holds the ledger's lock while writing.
type saver struct {
	ledger  *ledger
	rejects *rejectsWriter
	store   state.Store
	sync    string
	saves   *atomic.Int64
	now     func() time.Time

	mu      sync.Mutex // serializes saves (the loop's and the final one)
	savedAt uint64
	everSet bool

	// Writers wait for the save that counts their last acknowledgement (waitSaved).
	cond    *sync.Cond // on condMu; broadcast after every save and when the loop ends
	condMu  sync.Mutex
	durable uint64 // the version of the last successful save
	ended   bool   // the loop ended (stopped or failed): nobody waits any more
	// took is how long saves take (nanoseconds, a moving average of the last few).
	took atomic.Int64

	quit chan struct{}
	done chan struct{}
}

// start runs the group-commit loop until stop; a save that fails calls fail once and
// ends the loop.
func (s *saver) start(ctx context.Context, fail func(error)) {
	s.quit = make(chan struct{})
	s.done = make(chan struct{})
	s.cond = sync.NewCond(&s.condMu)
	go func() {
		defer close(s.done)
		defer func() {
			s.condMu.Lock()
			s.ended = true
			s.condMu.Unlock()
			s.cond.Broadcast()
		}()
		for {
			select {
			case <-s.quit:
				return
			case <-s.ledger.wake:
			}
			if err := s.save(ctx); err != nil {
				fail(err)
				return
			}
		}
	}()
}

// stop ends the loop and waits for a save under way.
func (s *saver) stop() {
	if s.quit == nil {
		return
	}
	close(s.quit)
	<-s.done
}

// save writes the ledger's snapshot unless nothing changed since the last save.
// (The final save, after the loop, needs no broadcast: no writer is left.)
func (s *saver) save(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	snap, version := s.ledger.snapshot()
	if s.everSet && version == s.savedAt {
		return nil
	}
	snap.UpdatedAt = s.now().UTC()
	began := time.Now()
	defer func() {
		d := int64(time.Since(began))
		if old := s.took.Load(); old > 0 {
			d = (3*old + d) / 4
		}
		s.took.Store(d)
	}()
	if err := s.rejects.flush(ctx); err != nil {
		return fmt.Errorf("writing rejects file: %w", err)
	}
	if err := s.store.Save(ctx, snap); err != nil {
		if errors.Is(err, state.ErrConflict) {
			return fmt.Errorf("sync %s: this run stops: %w", s.sync, err)
		}
		return fmt.Errorf("saving checkpoint of sync %s: %w", s.sync, err)
	}
	s.ledger.saved(snap.Generation)
	s.savedAt, s.everSet = version, true
	s.saves.Add(1)
	if s.cond != nil {
		s.condMu.Lock()
		s.durable = version
		s.condMu.Unlock()
		s.cond.Broadcast()
	}
	return nil
}

// worthWaiting tells whether a writer whose batch took took should wait for the save
// that counts it before taking the next batch. When a save takes no longer than a batch's
// write — a remote API, whatever the state; a local state with anything but the fastest
// destinations — waiting bounds what a kill resends to exactly the batches in flight,
// and costs little: group commit makes one save count every writer's batch. When saves
// are slower than writes (s3:// state with a destination on the same host), waiting
// would slow the sync to the pace of the saves: the writer goes on, and a kill also
// resends the batches acknowledged while the last save was written (SPEC.md counts them
// as in flight).
func (s *saver) worthWaiting(took time.Duration) bool {
	return s != nil && s.cond != nil && time.Duration(s.took.Load()) <= took
}

// waitSaved returns once a saved checkpoint counts the ledger's version v (or the loop
// ended). A writer calls it before it takes its next batch when worthWaiting, so that
// what a kill can make the next run resend is bounded by max_in_flight batches per
// destination: each writer has either a request in flight or an acknowledgement not yet
// saved, never both. Group commit keeps the cost low: one save counts the
// acknowledgements of every writer that arrived while the previous one was written.
// The wait always ends: the ledger's change woke the loop, which saves it, or fails and
// ends (a save under a cancelled context fails too).
func (s *saver) waitSaved(v uint64) {
	if s == nil || s.cond == nil {
		return
	}
	s.condMu.Lock()
	defer s.condMu.Unlock()
	for s.durable < v && !s.ended {
		s.cond.Wait()
	}
}
