package schedule

import (
	"context"
	"errors"
	"time"
)

// WatchQueue starts a run of the named sync whenever its queue holds messages (S3 event
// notifications on SQS), besides its schedule, until ctx ends. pending tells how many
// messages wait; it is asked every poll. A run starts once messages have been waiting
// for settle (a burst of uploads makes one run, not one each), and never while the sync
// runs: its run receives what arrived meanwhile, or the next one does.
func (s *Server) WatchQueue(ctx context.Context, name string, pending func(context.Context) (int, error), poll, settle time.Duration) {
	st, ok := s.byName[name]
	if !ok {
		return
	}
	log := s.log.With("sync", name)
	go func() {
		t := time.NewTicker(poll)
		defer t.Stop()
		var since time.Time // when messages were first seen waiting; zero: none
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			n, err := pending(ctx)
			if err != nil {
				if ctx.Err() == nil {
					log.Warn("looking at the sync's queue", "error", err)
				}
				continue
			}
			if n == 0 {
				since = time.Time{}
				continue
			}
			if since.IsZero() {
				since = time.Now()
			}
			if time.Since(since) < settle {
				continue
			}
			id, _, err := s.trigger(st, false, TriggerQueue, time.Time{})
			switch {
			case err == nil:
				log.Info("messages arrived in the sync's queue: run started", "run_id", id, "messages", n)
				since = time.Time{}
			case errors.Is(err, ErrRunning):
			case errors.Is(err, ErrStopping):
				return
			default:
				log.Warn("starting a run for the sync's queue", "error", err)
			}
		}
	}()
}
