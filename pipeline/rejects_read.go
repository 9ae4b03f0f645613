package pipeline

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"

	"github.com/backflowhq/backflow/state"
)

// RejectedRow is one line of a rejects file (SPEC.md): the row Row (from 0) of File,
// refused by Destination ("" when it was refused before delivery) for Reason; Message is
// the message that was refused, absent where the row could not be mapped.
type RejectedRow struct {
	File        string          `json:"file"`
	Row         int64           `json:"row"`
	Destination string          `json:"destination,omitempty"`
	Reason      string          `json:"reason"`
	Message     json.RawMessage `json:"message,omitempty"`
}

// Rejects are the rejected rows of one run.
type Rejects struct {
	Sync  string
	RunID string
	// Location is where the rejects file is: a path or an s3:// URL.
	Location string
	Rows     []RejectedRow
	// Unreadable counts the lines that are not a rejected row (a line torn by a crash):
	// they are left out of Rows.
	Unreadable int
}

// ReadRejects reads the rejects file of one run of the sync. Its error matches
// state.ErrNoRejects (errors.Is) when the run wrote none.
func ReadRejects(ctx context.Context, store state.Store, sync, runID string) (*Rejects, error) {
	rc, loc, err := store.OpenRejects(ctx, sync, runID)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	out := &Rejects{Sync: sync, RunID: runID, Location: loc}
	br := bufio.NewReaderSize(rc, 64<<10)
	for {
		line, err := br.ReadBytes('\n')
		if len(bytes.TrimSpace(line)) > 0 {
			var row RejectedRow
			var fields struct {
				Row *int64 `json:"row"`
			}
			if json.Unmarshal(line, &row) != nil || json.Unmarshal(line, &fields) != nil ||
				row.File == "" || fields.Row == nil || row.Row < 0 {
				out.Unreadable++
			} else {
				out.Rows = append(out.Rows, row)
			}
		}
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("reading rejects file %s: %w", loc, err)
		}
	}
}

// RejectsRun is a run of a sync that wrote a rejects file.
type RejectsRun struct {
	ID string
	// Report is the run's report in the run history; nil when the history no longer
	// holds it.
	Report *Report
	// RetriedBy is the newest completed retry of the run (see RetriedRuns); nil when none.
	RetriedBy *Report
}

// Pending tells whether the run's rejected rows are the ones to retry: no completed
// retry settled them, and the run is not a retry that failed (its rejects file may lack
// rows of the run it retried, which is still pending itself).
func (r RejectsRun) Pending() bool {
	if r.RetriedBy != nil {
		return false
	}
	return r.Report == nil || r.Report.RetryOf == "" || r.Report.Status != StatusFailed
}

// RunsWithRejects returns the sync's runs that wrote a rejects file, newest first, with
// their reports from the run history. Run ids tell the start time to the second only:
// runs that started within the same second are ordered by their start time in the
// history, when it has them. A history that cannot be read is returned as an error
// along with the runs.
func RunsWithRejects(ctx context.Context, store state.Store, sync string) ([]RejectsRun, error) {
	ids, err := store.RejectsRuns(ctx, sync)
	if err != nil {
		return nil, fmt.Errorf("listing the rejects of sync %s: %w", sync, err)
	}
	runs := make([]RejectsRun, len(ids))
	for i, id := range ids {
		runs[i].ID = id
	}
	reports, herr := history(ctx, store, sync)
	byID := map[string]*Report{}
	for _, rep := range reports {
		if _, seen := byID[rep.RunID]; !seen {
			byID[rep.RunID] = rep
		}
	}
	retried := retriedRuns(reports)
	for i := range runs {
		runs[i].Report = byID[runs[i].ID]
		runs[i].RetriedBy = retried[runs[i].ID]
	}
	sort.SliceStable(runs, func(i, j int) bool {
		a, b := runs[i], runs[j]
		if a.Report != nil && b.Report != nil && len(a.ID) > 16 && len(b.ID) > 16 && a.ID[:16] == b.ID[:16] {
			return a.Report.StartedAt.After(b.Report.StartedAt)
		}
		return a.ID > b.ID
	})
	return runs, herr
}

// RetriedRuns reads the sync's run history and returns, for each run whose rejected rows
// a retry has sent again, the newest such retry that completed (status ok or partial):
// its own rejects file then holds every row of the run still not delivered. A retry
// that failed does not count: the run's rows may still be retried. Runs beyond the kept
// history are not known.
func RetriedRuns(ctx context.Context, store state.Store, sync string) (map[string]*Report, error) {
	reports, err := history(ctx, store, sync)
	if err != nil {
		return nil, err
	}
	return retriedRuns(reports), nil
}

// history returns the sync's run reports, newest first; entries that are not reports are
// left out.
func history(ctx context.Context, store state.Store, sync string) ([]*Report, error) {
	raw, err := store.History(ctx, sync)
	if err != nil {
		return nil, fmt.Errorf("reading the run history of sync %s: %w", sync, err)
	}
	out := make([]*Report, 0, len(raw))
	for _, b := range raw {
		var rep Report
		if json.Unmarshal(b, &rep) == nil && rep.RunID != "" {
			out = append(out, &rep)
		}
	}
	return out, nil
}

func retriedRuns(reports []*Report) map[string]*Report {
	out := map[string]*Report{}
	for _, rep := range reports { // newest first
		if rep.RetryOf == "" || (rep.Status != StatusOK && rep.Status != StatusPartial) {
			continue
		}
		if _, seen := out[rep.RetryOf]; !seen {
			out[rep.RetryOf] = rep
		}
	}
	return out
}
