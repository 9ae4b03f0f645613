package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/destinations/all"
	"github.com/backflowhq/backflow/internal/render"
	"github.com/backflowhq/backflow/pipeline"
	"github.com/backflowhq/backflow/state"
)

type rejectsListOptions struct {
	run   string
	json  bool
	shard *string // the rejects command's --shard
}

type rejectsRetryOptions struct {
	run    string
	report string
	shard  *string // the rejects command's --shard
}

func newRejectsCommand(g *globalOptions) *cobra.Command {
	c := &cobra.Command{
		Use:   "rejects",
		Short: "List the rows a run rejected, or send them again",
		RunE: func(_ *cobra.Command, args []string) error {
			if len(args) > 0 {
				return &usageError{fmt.Errorf("unknown command %q for \"backflow rejects\": use list or retry", args[0])}
			}
			return &usageError{errors.New("backflow rejects needs a command: list or retry")}
		},
	}
	var lo rejectsListOptions
	list := &cobra.Command{
		Use:   "list",
		Short: "Print the rejected rows of a run (default: the newest run with rejects to retry)",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runRejectsList(cmd, g, lo)
		},
	}
	list.Flags().StringVar(&lo.run, "run", "", "the run id (default: the newest run with rejects)")
	list.Flags().BoolVar(&lo.json, "json", false, "print one JSON object: sync, run_id, location and rejects")

	var ro rejectsRetryOptions
	retry := &cobra.Command{
		Use:   "retry",
		Short: "Send the rejected rows of a run again to the destinations that refused them",
		Long: `Send the rejected rows of a run again, each to the destination that refused it (a
row refused before delivery goes to every destination), reading each row back from its
file and mapping it with the current mapping. A row whose file changed or vanished since
is reported, not sent. The retry is a run of its own, with its own report and rejects.

Without --run, the newest run with rejects that no retry has settled yet is retried.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runRejectsRetry(cmd, g, ro)
		},
	}
	retry.Flags().StringVar(&ro.run, "run", "", "the run id (default: the newest run with rejects not yet retried)")
	retry.Flags().StringVar(&ro.report, "report", "", "write the retry's run report as JSON to this file")
	var shard string
	c.PersistentFlags().StringVar(&shard, "shard", "", "the rejects of shard I/N (`sync --shard`); default: the unsharded sync's")
	lo.shard, ro.shard = &shard, &shard
	c.AddCommand(list, retry)
	return c
}

// rejectsShard is the shard of --shard (the zero Shard without it).
func rejectsShard(flag *string) (pipeline.Shard, error) {
	if flag == nil || *flag == "" {
		return pipeline.Shard{}, nil
	}
	shard, err := pipeline.ParseShard(*flag)
	if err != nil {
		return shard, &usageError{fmt.Errorf("--shard: %w", err)}
	}
	return shard, nil
}

// noRejectsError is a run id without a rejects file (exit 2): it names the runs that
// have one.
func noRejectsError(sync, runID string, runs []string) error {
	msg := fmt.Sprintf("run %s of sync %s has no rejected rows", runID, sync)
	switch {
	case len(runs) == 0:
		msg += "; no run of it has any"
	case len(runs) <= 10:
		msg += "; runs with rejects: " + strings.Join(runs, ", ")
	default:
		msg += fmt.Sprintf("; runs with rejects (the newest 10 of %d): %s", len(runs), strings.Join(runs[:10], ", "))
	}
	return &usageError{errors.New(msg)}
}

// rejectsRuns opens the state and lists the runs of the sync that have rejects, newest
// first. A history that cannot be read is only a warning.
func rejectsRuns(ctx context.Context, g *globalOptions, shardFlag *string) (*config.Config, *config.Sync, state.Store, []pipeline.RejectsRun, error) {
	cfg, s, err := g.loadSync()
	if err != nil {
		return nil, nil, nil, nil, err
	}
	store, err := openStore(ctx, cfg)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	shard, err := rejectsShard(shardFlag)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	runs, err := pipeline.RunsWithRejects(ctx, store, shard.StateName(s.Name))
	if err != nil && runs == nil {
		return nil, nil, nil, nil, err
	}
	if err != nil {
		fmt.Fprintf(g.stderr, "backflow: %s\n", scrub(err.Error(), g))
	}
	return cfg, s, store, runs, nil
}

// defaultRun is the run `rejects list` shows without --run: the newest run whose rows
// are still to retry, else the newest run that is not a failed retry (whose rows are
// also its original's), else the newest run. runs is not empty.
func defaultRun(runs []pipeline.RejectsRun) pipeline.RejectsRun {
	for _, r := range runs {
		if r.Pending() {
			return r
		}
	}
	for _, r := range runs {
		if r.Report == nil || r.Report.RetryOf == "" || r.Report.Status != pipeline.StatusFailed {
			return r
		}
	}
	return runs[0]
}

// findRun returns the run with id among runs.
func findRun(runs []pipeline.RejectsRun, id string) (pipeline.RejectsRun, bool) {
	for _, r := range runs {
		if r.ID == id {
			return r, true
		}
	}
	return pipeline.RejectsRun{}, false
}

func runIDs(runs []pipeline.RejectsRun) []string {
	ids := make([]string, len(runs))
	for i, r := range runs {
		ids[i] = r.ID
	}
	return ids
}

func runRejectsList(cmd *cobra.Command, g *globalOptions, o rejectsListOptions) error {
	ctx := cmd.Context()
	_, s, store, runs, err := rejectsRuns(ctx, g, o.shard)
	if err != nil {
		return err
	}
	out := cmd.OutOrStdout()
	var run pipeline.RejectsRun
	if o.run == "" {
		if len(runs) == 0 {
			if o.json {
				return writeJSON(out, map[string]any{"sync": s.Name, "run_id": nil, "location": nil, "rejects": []any{}})
			}
			fmt.Fprintf(out, "Sync %s has no rejected rows.\n", s.Name)
			return nil
		}
		run = defaultRun(runs)
	} else {
		var ok bool
		if run, ok = findRun(runs, o.run); !ok {
			return noRejectsError(s.Name, o.run, runIDs(runs))
		}
	}
	runID := run.ID
	shard, _ := rejectsShard(o.shard) // checked by rejectsRuns
	rej, err := pipeline.ReadRejects(ctx, store, shard.StateName(s.Name), runID)
	if errors.Is(err, state.ErrNoRejects) {
		return noRejectsError(s.Name, runID, runIDs(runs))
	}
	if err != nil {
		return err
	}
	if rej.Unreadable > 0 {
		fmt.Fprintf(g.stderr, "backflow: %s: %d lines are not rejected rows (left out)\n", rej.Location, rej.Unreadable)
	}
	by := run.RetriedBy

	if o.json {
		rows := rej.Rows
		if rows == nil {
			rows = []pipeline.RejectedRow{}
		}
		v := struct {
			Sync      string                 `json:"sync"`
			RunID     string                 `json:"run_id"`
			Location  string                 `json:"location"`
			RetriedBy string                 `json:"retried_by,omitempty"`
			Rejects   []pipeline.RejectedRow `json:"rejects"`
		}{Sync: s.Name, RunID: runID, Location: rej.Location, Rejects: rows}
		if by != nil {
			v.RetriedBy = by.RunID
		}
		return writeJSON(out, v)
	}

	what := "rows"
	if len(rej.Rows) == 1 {
		what = "row"
	}
	fmt.Fprintf(out, "Sync %s, run %s: %d rejected %s (%s)\n", s.Name, runID, len(rej.Rows), what, rej.Location)
	if by != nil {
		fmt.Fprintf(out, "Retried by run %s (%s).\n", by.RunID, by.Status)
	}
	if len(rej.Rows) == 0 {
		return nil
	}
	fmt.Fprintln(out)
	header := []string{"FILE", "ROW", "DESTINATION", "REASON"}
	rows := make([][]string, len(rej.Rows))
	for i, r := range rej.Rows {
		dest := r.Destination
		if dest == "" {
			dest = "-" // refused before delivery
		}
		rows[i] = []string{r.File, strconv.FormatInt(r.Row, 10), dest, r.Reason}
	}
	fitReasons(header, rows, terminalWidth(out, g))
	return render.Table(out, header, rows, 0)
}

// fitReasons cuts the last column (the reason) so that each line fits width terminal
// columns, keeping at least 20 of them for the reason (width <= 0: no cut). Other
// cells are made safe for the terminal here too, so that their widths are exact.
func fitReasons(header []string, rows [][]string, width int) {
	if width <= 0 {
		return
	}
	last := len(header) - 1
	widths := make([]int, last)
	for _, r := range append([][]string{header}, rows...) {
		for j := 0; j < last; j++ {
			r[j] = render.Cell(r[j], 0)
			widths[j] = max(widths[j], render.Width(r[j]))
		}
	}
	used := 0
	for _, w := range widths {
		used += w + 2 // the cell and the gap after it
	}
	room := max(20, width-used)
	for _, r := range rows {
		r[last] = render.Cell(r[last], room)
	}
}

// terminalWidth is the width of the terminal out writes to, else $COLUMNS, else 0 (not
// a terminal: nothing is cut).
func terminalWidth(out io.Writer, g *globalOptions) int {
	if f, ok := out.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		if w, _, err := term.GetSize(int(f.Fd())); err == nil && w > 0 {
			return w
		}
	}
	if v, ok := g.getenv("COLUMNS"); ok {
		if n, err := strconv.Atoi(v); err == nil && n > 0 {
			return n
		}
	}
	return 0
}

func writeJSON(out io.Writer, v any) error {
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func runRejectsRetry(cmd *cobra.Command, g *globalOptions, o rejectsRetryOptions) error {
	ctx := cmd.Context()
	cfg, s, store, runs, err := rejectsRuns(ctx, g, o.shard)
	if err != nil {
		return err
	}
	logger, err := g.logger()
	if err != nil {
		return err
	}
	runID := o.run
	if runID == "" {
		for _, r := range runs {
			if r.Pending() {
				runID = r.ID
				break
			}
		}
		if runID == "" {
			if len(runs) == 0 {
				fmt.Fprintf(g.stderr, "Sync %s has no rejected rows to retry.\n", s.Name)
			} else if r := defaultRun(runs); r.RetriedBy != nil {
				fmt.Fprintf(g.stderr, "Sync %s has no rejected rows left to retry: run %s was retried by run %s (%s).\n",
					s.Name, r.ID, r.RetriedBy.RunID, r.RetriedBy.Status)
			} else {
				fmt.Fprintf(g.stderr, "Sync %s has no rejected rows left to retry.\n", s.Name)
			}
			return nil
		}
	} else if r, ok := findRun(runs, runID); !ok {
		return noRejectsError(s.Name, runID, runIDs(runs))
	} else if r.RetriedBy != nil {
		logger.Warn("this run was retried already; its rows are sent again (with the same messageIds)",
			"run", runID, "retried_by", r.RetriedBy.RunID)
	}

	shard, _ := rejectsShard(o.shard) // checked by rejectsRuns
	rep, runErr := pipeline.Retry(ctx, pipeline.RetryOptions{
		Config:   cfg,
		Sync:     s,
		Shard:    shard,
		Of:       runID,
		Registry: all.Registry(),
		Store:    store,
		Logger:   logger,
		Stdout:   g.stdout,
		Version:  version,
	})
	if errors.Is(runErr, state.ErrNoRejects) {
		return noRejectsError(s.Name, runID, runIDs(runs))
	}
	if rep == nil {
		return runErr // another run holds the sync's lease: nothing was done
	}
	writeReport(g, o.report, rep)
	if g.logFormat == "json" {
		logger.Info("retry finished", "sync", rep.Sync, "run_id", rep.RunID, "retry_of", rep.RetryOf,
			"status", rep.Status, "files", rep.Files, "rows", rep.Rows, "destinations", rep.Destinations,
			"file_errors", rep.FileErrors, "rejects_file", rep.RejectsFile, "duration_ms", rep.DurationMS)
	} else {
		for _, fe := range rep.FileErrors {
			fmt.Fprintf(g.stderr, "backflow: %s: %s\n", fe.Key, scrub(fe.Error, g))
		}
		fmt.Fprintln(g.stderr, scrub(retrySummary(rep), g))
	}
	if runErr != nil {
		return runErr
	}
	if rep.Status == pipeline.StatusPartial {
		return &exitError{code: exitPartial}
	}
	return nil
}

// retrySummary is the one-paragraph account of a retry printed on stderr.
func retrySummary(r *pipeline.Report) string {
	s := fmt.Sprintf("%s: retry of run %s %s in %s (run %s): files %d read, %d changed, %d vanished; rows %d read, %d sent, %d rejected again, %d not retried",
		r.Sync, r.RetryOf, r.Status, time.Duration(r.DurationMS)*time.Millisecond, r.RunID,
		r.Files.Read, r.Files.Changed, r.Files.Vanished, r.Rows.Read, r.Rows.Sent, r.Rows.Rejected, r.Rows.NotRetried)
	for _, name := range slices.Sorted(maps.Keys(r.Destinations)) {
		d := r.Destinations[name]
		if d.Delivered == 0 && d.Failed == 0 {
			continue
		}
		s += fmt.Sprintf("; %s: %d delivered, %d failed", name, d.Delivered, d.Failed)
	}
	if r.RejectsFile != "" {
		s += "; rejects in " + r.RejectsFile
	}
	return s
}
