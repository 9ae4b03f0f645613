package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/spf13/cobra"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/destinations/all"
	"github.com/backflowhq/backflow/internal/logging"
	"github.com/backflowhq/backflow/state"
)

// globalOptions are the flags every command takes, and the process's streams.
type globalOptions struct {
	configFile string
	syncName   string
	logFormat  string
	logLevel   string

	stdout, stderr io.Writer
	getenv         func(string) (string, bool)

	secrets []string // filled once the config is loaded, to scrub output
}

func (g *globalOptions) addFlags(c *cobra.Command) {
	f := c.PersistentFlags()
	f.StringVarP(&g.configFile, "config", "c", "", "config file (default $BACKFLOW_CONFIG, else backflow.yaml)")
	f.StringVar(&g.syncName, "sync", "", "which sync of the config file (may be omitted when it has one)")
	f.StringVar(&g.logFormat, "log-format", "text", "log format: text or json")
	f.StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	_ = c.RegisterFlagCompletionFunc("log-format", fixedCompletion("text", "json"))
	_ = c.RegisterFlagCompletionFunc("log-level", fixedCompletion("debug", "info", "warn", "error"))
	// Sync names come from the config file the command line names, as the command
	// would load it.
	_ = c.RegisterFlagCompletionFunc("sync", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		cfg, err := config.Load(g.configPath(), g.getenv, all.Registry())
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		names := make([]string, len(cfg.Syncs))
		for i := range cfg.Syncs {
			names[i] = cfg.Syncs[i].Name
		}
		return names, cobra.ShellCompDirectiveNoFileComp
	})
}

// fixedCompletion completes a flag's value from a fixed list.
func fixedCompletion(values ...string) cobra.CompletionFunc {
	return func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return values, cobra.ShellCompDirectiveNoFileComp
	}
}

// configPath is -c, else $BACKFLOW_CONFIG, else backflow.yaml.
func (g *globalOptions) configPath() string {
	if g.configFile != "" {
		return g.configFile
	}
	if p, ok := g.getenv("BACKFLOW_CONFIG"); ok && p != "" {
		return p
	}
	return "backflow.yaml"
}

func (g *globalOptions) loadConfig() (*config.Config, error) {
	cfg, err := config.Load(g.configPath(), g.getenv, all.Registry())
	if err != nil {
		return nil, err
	}
	g.secrets = cfg.Secrets()
	return cfg, nil
}

// loadSync loads the config and picks the sync named by --sync.
func (g *globalOptions) loadSync() (*config.Config, *config.Sync, error) {
	cfg, err := g.loadConfig()
	if err != nil {
		return nil, nil, err
	}
	s, err := cfg.Sync(g.syncName)
	if err != nil {
		return nil, nil, &usageError{fmt.Errorf("%w (choose one with --sync NAME; check, sync and state show also take --all)", err)}
	}
	return cfg, s, nil
}

func (g *globalOptions) logger() (*slog.Logger, error) {
	l, err := logging.New(g.stderr, g.logFormat, g.logLevel, g.secrets)
	if err != nil {
		return nil, &usageError{err}
	}
	return l, nil
}

func openStore(ctx context.Context, cfg *config.Config) (state.Store, error) {
	st, err := state.Open(ctx, cfg.State)
	if err != nil {
		return nil, fmt.Errorf("opening state %s: %w", cfg.State.URL, err)
	}
	return st, nil
}

// scrub removes the config's secrets from text meant for the terminal.
func scrub(s string, g *globalOptions) string { return logging.Scrub(s, g.secrets) }

// addAllFlag adds --all to a command that works on one sync.
func addAllFlag(c *cobra.Command, all *bool) {
	c.Flags().BoolVar(all, "all", false, "every sync of the config file, one after the other")
}

// eachSync runs fn for the sync --sync names or, with all, for every sync of the file
// in turn, each one's errors printed as they come. The exit code is the worst: a usage
// error, then a failure, then a partial run.
func eachSync(g *globalOptions, all bool, fn func() error) error {
	if !all {
		return fn()
	}
	if g.syncName != "" {
		return &usageError{errors.New("--all and --sync: use one of them")}
	}
	cfg, err := g.loadConfig()
	if err != nil {
		return err
	}
	worst := exitOK
	rank := map[int]int{exitOK: 0, exitPartial: 1, exitFailed: 2, exitUsage: 3}
	for _, s := range cfg.Syncs {
		g.syncName = s.Name
		err := fn()
		if err == nil {
			continue
		}
		code := exitCode(err)
		var ee *exitError
		if !errors.As(err, &ee) || ee.err != nil {
			if !strings.Contains(err.Error(), "sync "+s.Name) {
				err = fmt.Errorf("sync %s: %w", s.Name, err)
			}
			printError(g.stderr, err, g.secrets)
		}
		if rank[code] > rank[worst] {
			worst = code
		}
	}
	g.syncName = ""
	if worst == exitOK {
		return nil
	}
	return &exitError{code: worst}
}
