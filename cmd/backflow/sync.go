package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/spf13/cobra"

	"github.com/backflowhq/backflow/destinations/all"
	"github.com/backflowhq/backflow/internal/procstat"
	"github.com/backflowhq/backflow/notify"
	"github.com/backflowhq/backflow/pipeline"
	"github.com/backflowhq/backflow/state"
)

type syncOptions struct {
	full     bool
	dryRun   bool
	report   string
	grace    time.Duration
	wait     time.Duration
	shard    string
	progress string
	all      bool
}

func newSyncCommand(g *globalOptions) *cobra.Command {
	var o syncOptions
	c := &cobra.Command{
		Use:   "sync",
		Short: "Run the sync once",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.all && o.report != "" {
				return &usageError{errors.New("--report with --all: each sync would overwrite the same file; run the syncs one by one")}
			}
			return eachSync(g, o.all, func() error { return runSync(cmd, g, o) })
		},
	}
	f := c.Flags()
	f.BoolVar(&o.full, "full", false, "send everything again (a full sync)")
	f.BoolVar(&o.dryRun, "dry-run", false, "read, map and count, but send nothing and write no state")
	f.StringVar(&o.report, "report", "", "write the run report as JSON to this file")
	f.DurationVar(&o.grace, "grace", 30*time.Second, "on SIGINT/SIGTERM, how long batches in flight may take to finish")
	f.StringVar(&o.shard, "shard", "", "run shard I of N (I/N, from 0; default $BACKFLOW_SHARD): each shard syncs its own part and keeps its own state")
	f.DurationVar(&o.wait, "wait", 0, "when another run of the sync holds its lease, wait this long for it (default: exit 1 at once)")
	f.StringVar(&o.progress, "progress", "auto", "progress bar: auto (on a terminal), always or never")
	_ = c.RegisterFlagCompletionFunc("progress", fixedCompletion("auto", "always", "never"))
	addAllFlag(c, &o.all)
	return c
}

func runSync(cmd *cobra.Command, g *globalOptions, o syncOptions) error {
	ctx := cmd.Context()
	cfg, s, err := g.loadSync()
	if err != nil {
		return err
	}
	switch o.progress {
	case "auto", "always", "never":
	default:
		return &usageError{fmt.Errorf("--progress %q: want auto, always or never", o.progress)}
	}
	if o.wait < 0 {
		return &usageError{fmt.Errorf("--wait %s: must not be negative", o.wait)}
	}
	var shard pipeline.Shard
	shardSpec, shardFrom := o.shard, "--shard"
	if shardSpec == "" {
		shardSpec, _ = g.getenv("BACKFLOW_SHARD")
		shardFrom = "BACKFLOW_SHARD"
	}
	if shardSpec != "" {
		if shard, err = pipeline.ParseShard(shardSpec); err != nil {
			return &usageError{fmt.Errorf("%s: %w", shardFrom, err)}
		}
	}
	stateName := shard.StateName(s.Name)
	if o.report != "" {
		// Found before anything is read or sent: a run whose report cannot be written
		// would be a run nobody can account for.
		if err := checkWritable(o.report); err != nil {
			return &usageError{fmt.Errorf("--report %s: %w", o.report, err)}
		}
	}
	logger, err := g.logger()
	if err != nil {
		return err
	}
	store, err := openStore(ctx, cfg)
	if err != nil {
		return err
	}
	var obs pipeline.Observer = pipeline.NopObserver{}
	var bar *progressBar
	if o.progress == "always" || (o.progress == "auto" && isTerminal(g.stderr)) {
		bar = newProgressBar(g.stderr, s.Name)
		obs = bar
	}
	// Notifications: none for a dry run. run.started goes out before the run, with the
	// run's id; the run's end is judged against the history before the report joins it.
	var notifier *notify.Notifier
	if !o.dryRun {
		notifier = notify.New(notify.Options{Config: cfg, History: store, Logger: logger})
	}
	runID := pipeline.NewRunID(time.Now())
	rep, runErr := pipeline.Run(ctx, pipeline.Options{
		Config:   cfg,
		Sync:     s,
		Full:     o.full,
		DryRun:   o.dryRun,
		Registry: all.Registry(),
		Store:    store,
		Logger:   logger,
		Observer: obs,
		Stdout:   g.stdout,
		Version:  version,
		Grace:    o.grace,
		Wait:     o.wait,
		Shard:    shard,
		RunID:    runID,
		// run.started goes out once the run holds the sync's lease: a run that finds
		// another one active did not start.
		Started: func() { notifier.Started(s.Name, runID) },
	})
	if bar != nil {
		bar.finish()
	}
	if errors.Is(runErr, state.ErrLeaseHeld) {
		// Another run is active: this one did nothing, and says only that.
		return runErr
	}
	if peak, ok := procstat.PeakRSS(); ok && rep != nil {
		rep.PeakRSSBytes = peak
	}
	// The history and the report are written even when the run was interrupted: ctx is
	// done then, and they must not be lost with it.
	ctx = context.WithoutCancel(ctx)
	if !o.dryRun && rep != nil && (runErr == nil || exitCode(runErr) != exitUsage) {
		// The report joins the sync's run history, which `serve` shows in GET /syncs: runs
		// started from the command line or a CronJob are listed with scheduled ones. A
		// configuration error (exit 2) writes nothing, and notifies nothing.
		notifier.Finished(context.WithoutCancel(ctx), rep)
		if b, err := json.Marshal(rep); err == nil {
			hctx, cancel := context.WithTimeout(ctx, time.Minute)
			err := store.AppendHistory(hctx, stateName, b, cfg.Serve.History)
			cancel()
			if err != nil {
				logger.Warn("recording the run in the history", "error", err)
			}
		}
	}
	writeReport(g, o.report, rep)
	if g.logFormat == "json" {
		// Keep stderr all JSON lines for log shippers: the summary is a log record.
		logger.Info("run finished", "sync", rep.Sync, "run_id", rep.RunID, "status", rep.Status,
			"full_sync", rep.FullSync, "full_sync_reason", rep.FullSyncReason,
			"files", rep.Files, "rows", rep.Rows, "destinations", rep.Destinations,
			"rejects_file", rep.RejectsFile, "duration_ms", rep.DurationMS)
	} else {
		fmt.Fprintln(g.stderr, scrub(summary(rep), g))
	}
	// The notifications in flight may delay the exit, by MaxDelay at most (every attempt
	// timing out); they never change the exit code.
	waitCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), notifier.MaxDelay())
	if err := notifier.Wait(waitCtx); err != nil {
		logger.Warn("not waiting any longer for notifications", "waited", notifier.MaxDelay().String())
	}
	cancel()
	if runErr != nil {
		return runErr
	}
	if rep.Status == pipeline.StatusPartial {
		return &exitError{code: exitPartial}
	}
	return nil
}

// writeReport writes the run report as indented JSON to path (nothing when path is
// empty); a failure is said on stderr and changes no exit code: the run happened.
func writeReport(g *globalOptions, path string, rep *pipeline.Report) {
	if path == "" {
		return
	}
	b, err := json.MarshalIndent(rep, "", "  ")
	if err == nil {
		err = os.WriteFile(path, append(b, '\n'), 0o644)
	}
	if err != nil {
		fmt.Fprintf(g.stderr, "backflow: writing report %s: %v\n", path, err)
	}
}

// checkWritable tells whether a file can be written at path: its directory exists and
// takes a new file (a probe, removed at once).
func checkWritable(path string) error {
	dir := filepath.Dir(path)
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("its directory %s: %w", dir, errors.Unwrap(err))
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	f, err := os.CreateTemp(dir, ".backflow-report-*")
	if err != nil {
		return fmt.Errorf("cannot write in %s: %w", dir, errors.Unwrap(err))
	}
	name := f.Name()
	f.Close()
	return os.Remove(name)
}

// summary is the one-paragraph account of a run printed on stderr.
func summary(r *pipeline.Report) string {
	kind := "incremental sync"
	if r.FullSync {
		kind = "full sync (" + r.FullSyncReason + ")"
	}
	if r.DryRun {
		kind = "dry run, " + kind
	}
	// Each count means one thing. Rows are counted as read, unchanged and rejected (by
	// the mapping); what each destination did with the others is its own count:
	// delivered, failed, or pending (neither, when a run stopped or hung). The report's
	// rows.sent (delivered to at least one destination) is left out here: next to a
	// destination that failed every row, it read as if they had arrived.
	s := fmt.Sprintf("%s: %s %s in %s: files %d listed, %d read, %d unchanged, %d skipped, %d rejected; rows %d read, %d unchanged, %d rejected",
		r.Sync, kind, r.Status, time.Duration(r.DurationMS)*time.Millisecond,
		r.Files.Listed, r.Files.Read, r.Files.Unchanged, r.Files.Skipped, r.Files.Rejected,
		r.Rows.Read, r.Rows.Unchanged, r.Rows.Rejected)
	if r.DryRun {
		s += fmt.Sprintf("; would send %d", r.Rows.WouldSend)
	}
	for _, name := range slices.Sorted(maps.Keys(r.Destinations)) {
		d := r.Destinations[name]
		var pending int64
		if r.Status == pipeline.StatusFailed && !r.DryRun {
			// A run that ended cleanly left nothing pending; one that stopped left the
			// rows it read that this destination neither took nor refused.
			pending = max(0, r.Rows.Read-r.Rows.Rejected-r.Rows.Unchanged-d.Delivered-d.Failed-d.Unchanged)
		}
		s += fmt.Sprintf("; %s: %d delivered, %d failed, %d pending", name, d.Delivered, d.Failed, pending)
	}
	if r.RejectsFile != "" {
		s += "; rejects in " + r.RejectsFile
	}
	return s
}
