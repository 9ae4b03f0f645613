package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/destinations/all"
	"github.com/backflowhq/backflow/notify"
	"github.com/backflowhq/backflow/pipeline"
	"github.com/backflowhq/backflow/reader/discovery"
	"github.com/backflowhq/backflow/schedule"
)

type serveOptions struct {
	listen         string
	authTokenFile  string
	insecureListen bool
}

func newServeCommand(g *globalOptions) *cobra.Command {
	var o serveOptions
	c := &cobra.Command{
		Use:   "serve",
		Short: "Run every scheduled sync on its schedule, with /healthz, /metrics and /syncs",
		Long: `serve runs every sync that has a schedule, on its schedule, until SIGINT or SIGTERM.
A sync never runs twice at once, also across several serve processes sharing an s3://
state (replicas): each due run runs on one of them. On the first signal it starts no new run, lets the runs in
flight deliver or checkpoint within serve.shutdown_grace, and exits 0; a second signal exits
at once. With --sync NAME, serve runs and shows only that sync.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runServe(cmd, g, o)
		},
	}
	c.Flags().StringVar(&o.listen, "listen", "127.0.0.1:8080", "address of the HTTP endpoints and the status page")
	c.Flags().StringVar(&o.authTokenFile, "auth-token-file", "", "file holding the token every endpoint but /healthz requires (instead of serve.auth_token)")
	c.Flags().BoolVar(&o.insecureListen, "insecure-listen", false, "listen on a non-loopback address without an auth token")
	return c
}

// How often serve looks at the queues of event-discovered syncs, and how long messages
// wait before a run starts (a burst of uploads makes one run).
const (
	queuePoll   = 500 * time.Millisecond
	queueSettle = 200 * time.Millisecond
)

func runServe(cmd *cobra.Command, g *globalOptions, o serveOptions) error {
	ctx := cmd.Context()
	cfg, err := g.loadConfig()
	if err != nil {
		return err
	}
	token, err := authToken(cfg.Serve.AuthToken, o.authTokenFile)
	if err != nil {
		return &usageError{err}
	}
	if token != "" {
		g.secrets = append(g.secrets, token) // redacted from logs and errors like the config's
	} else if !o.insecureListen {
		if err := requireLoopback(ctx, o.listen); err != nil {
			return &usageError{err}
		}
	}
	syncs := cfg.Syncs
	if g.syncName != "" {
		s, err := cfg.Sync(g.syncName)
		if err != nil {
			return &usageError{err}
		}
		syncs = []config.Sync{*s}
	}
	logger, err := g.logger()
	if err != nil {
		return err
	}
	scheduled := 0
	for _, s := range syncs {
		if s.Schedule.Every != 0 || s.Schedule.Cron != "" {
			scheduled++
		}
	}
	if scheduled == 0 {
		// Not an error (runs can be started over HTTP), but never silent: a serve that
		// never runs anything on its own is most often a schedule left out.
		logger.Warn("no sync has a schedule: serve runs them only when asked (POST /syncs/{name}/run or the status page)",
			"syncs", len(syncs))
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
			// The server's store: with several replicas over one state, a run whose
			// slot another replica already ran stops once it holds the lease, and the
			// lease is kept until the run's report is in the history.
			Store:    srv.RunStore(),
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
		Syncs:             syncs,
		Run:               runSync,
		Store:             store,
		MaxConcurrentRuns: cfg.Serve.MaxConcurrentRuns,
		History:           cfg.Serve.History,
		ShutdownGrace:     cfg.Serve.ShutdownGrace,
		Logger:            logger,
		Notifier:          notifier,
		AuthToken:         token,
	})
	if err != nil {
		return &usageError{err}
	}
	// Syncs discovered by S3 event notifications also run when messages arrive.
	for _, sc := range cfg.Syncs {
		if sc.Source.Discovery.Type != config.DiscoverySQS {
			continue
		}
		q, err := discovery.NewQueue(ctx, sc.Source.Discovery, sc.Source.S3)
		if err != nil {
			return &usageError{fmt.Errorf("sync %s: %w", sc.Name, err)}
		}
		srv.WatchQueue(ctx, sc.Name, q.Pending, queuePoll, queueSettle)
	}
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return &usageError{fmt.Errorf("--listen %s: %w", o.listen, err)}
	}
	if token == "" {
		const msg = "the HTTP endpoints have no authentication: set serve.auth_token or --auth-token-file"
		if o.insecureListen && requireLoopback(ctx, o.listen) != nil {
			logger.Warn(msg, "listen", o.listen, "insecure_listen", true)
		} else {
			logger.Info(msg, "listen", o.listen)
		}
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

// authToken is serve's token: --auth-token-file's content (one line; a trailing line
// break is dropped, as editors and `echo` add one) when given, else serve.auth_token.
func authToken(fromConfig, file string) (string, error) {
	if file == "" {
		return fromConfig, nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("--auth-token-file: %w", err)
	}
	tok := strings.TrimRight(string(b), "\r\n")
	if err := config.CheckAuthToken(tok); err != nil {
		return "", fmt.Errorf("--auth-token-file %s: the token %w", file, err)
	}
	return tok, nil
}

// requireLoopback refuses an address that other machines can reach: without a token,
// anyone who can connect could start runs and read run reports.
func requireLoopback(ctx context.Context, listen string) error {
	refuse := fmt.Errorf("--listen %s is reachable from other machines and serve has no auth token: "+
		"set serve.auth_token (or --auth-token-file), listen on 127.0.0.1, or pass --insecure-listen", listen)
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return fmt.Errorf("--listen %s: %w", listen, err)
	}
	if host == "" {
		return refuse // every interface
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		ip = ip.Unmap()
		if !ip.IsLoopback() {
			return refuse
		}
		return nil
	}
	// A name: it must resolve to loopback addresses only (localhost does).
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return fmt.Errorf("--listen %s: %w", listen, err)
	}
	for _, ip := range ips {
		if !ip.Unmap().IsLoopback() {
			return refuse
		}
	}
	return nil
}
