package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/backflowhq/backflow/destinations/all"
	"github.com/backflowhq/backflow/pipeline"
)

func newCheckCommand(g *globalOptions) *cobra.Command {
	var all bool
	c := &cobra.Command{
		Use:   "check",
		Short: "Validate the config, reach the source, the state and every destination, sending nothing",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return eachSync(g, all, func() error { return runCheck(cmd, g) })
		},
	}
	addAllFlag(c, &all)
	return c
}

func runCheck(cmd *cobra.Command, g *globalOptions) error {
	ctx := cmd.Context()
	cfg, s, err := g.loadSync()
	if err != nil {
		return err
	}
	out := cmd.OutOrStdout()
	fmt.Fprintf(out, "ok    config %s (sync %s)\n", cfg.Path, s.Name)
	store, err := openStore(ctx, cfg)
	if err != nil {
		fmt.Fprintf(out, "FAIL  state %s: %v\n", cfg.State.URL, err)
	}
	failed, configFailed := err != nil, false
	for _, r := range pipeline.Check(ctx, cfg, s, all.Registry(), store, version) {
		status := "ok  "
		switch {
		case r.Warn:
			status = "warn"
		case !r.OK:
			status = "FAIL"
			failed = true
			configFailed = configFailed || r.Config
		}
		fmt.Fprintf(out, "%s  %s: %s\n", status, r.What, scrub(r.Detail, g))
	}
	// A mapping that does not fit the schema is the configuration's fault: exit 2, as
	// sync and preview do for it.
	if configFailed {
		return &exitError{code: exitUsage, err: fmt.Errorf("check failed for sync %s: the mapping does not fit the sync's schema", s.Name)}
	}
	if failed {
		return &exitError{code: exitFailed, err: fmt.Errorf("check failed for sync %s", s.Name)}
	}
	return nil
}
