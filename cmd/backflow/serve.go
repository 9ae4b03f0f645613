package main

import (
	"context"
	"fmt"
	"net"

	"github.com/spf13/cobra"

	"github.com/backflowhq/backflow/destinations/all"
	"github.com/backflowhq/backflow/notify"
	"github.com/backflowhq/backflow/pipeline"
	"github.com/backflowhq/backflow/schedule"
)

type serveOptions struct {
	listen string
}

func newServeCommand(g *globalOptions) *cobra.Command {
	var o serveOptions
	c := &cobra.Command{
		Use:   "serve",
		Short: "Run every scheduled sync on its schedule, with /healthz, /metrics and /syncs",
		Long: `serve runs every sync that has a schedule, on its schedule, until SIGINT or SIGTERM.
A sync never runs twice at once. On the first signal it starts no new run, lets the runs in
flight deliver or checkpoint within serve.shutdown_grace, and exits 0; a second signal exits
at once. --sync is ignored: serve runs every sync of the file.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runServe(cmd, g, o)
		},
	}
	c.Flags().StringVar(&o.listen, "listen", "127.0.0.1:8080", "address of the HTTP endpoints")
	return c
}

func runServe(cmd *cobra.Command, g *globalOptions, o serveOptions) error {
	ctx := cmd.Context()
	cfg, err := g.loadConfig()
	if err != nil {
		return err
	}
	logger, err := g.logger()
	if err != nil {
		return err
	}
	store, err := openStore(ctx, cfg)
	if err != nil {
		return err
	}
	registry := all.Registry()
	// Deliveries in flight get most of the grace; the rest is for the checkpoint.
	deliverGrace := cfg.Serve.ShutdownGrace * 2 / 3
	var srv *schedule.Server
	runSync := func(ctx context.Context, name string, full bool) (*pipeline.Report, error) {
		s, err := cfg.Sync(name)
		if err != nil {
			return nil, err
		}
		return pipeline.Run(ctx, pipeline.Options{
			Config:   cfg,
			Sync:     s,
			Full:     full,
			Registry: registry,
			Store:    store,
			Logger:   logger,
			Observer: srv.Observer(),
			Stdout:   g.stdout,
			Version:  version,
			RunID:    schedule.RunID(ctx),
			Grace:    deliverGrace,
		})
	}
	notifier := notify.New(notify.Options{Config: cfg, History: store, Logger: logger})
	srv, err = schedule.NewServer(schedule.Options{
		Syncs:             cfg.Syncs,
		Run:               runSync,
		Store:             store,
		MaxConcurrentRuns: cfg.Serve.MaxConcurrentRuns,
		History:           cfg.Serve.History,
		ShutdownGrace:     cfg.Serve.ShutdownGrace,
		Logger:            logger,
		Notifier:          notifier,
	})
	if err != nil {
		return &usageError{err}
	}
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return &usageError{fmt.Errorf("--listen %s: %w", o.listen, err)}
	}
	err = srv.Run(ctx, ln)
	// The last runs' notifications may still be in flight: give them MaxDelay at most.
	waitCtx, cancel := context.WithTimeout(context.Background(), notifier.MaxDelay())
	if werr := notifier.Wait(waitCtx); werr != nil {
		logger.Warn("not waiting any longer for notifications", "waited", notifier.MaxDelay().String())
	}
	cancel()
	return err
}
