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

	quit chan struct{}
	done chan struct{}
}

// start runs the group-commit loop until stop; a save that fails calls fail once and
// ends the loop.
func (s *saver) start(ctx context.Context, fail func(error)) {
	s.quit = make(chan struct{})
	s.done = make(chan struct{})
	go func() {
		defer close(s.done)
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
func (s *saver) save(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	snap, version := s.ledger.snapshot()
	if s.everSet && version == s.savedAt {
		return nil
	}
	snap.UpdatedAt = s.now().UTC()
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
	return nil
}
