package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/internal/render"
	"github.com/backflowhq/backflow/pipeline"
	"github.com/backflowhq/backflow/state"
)

func newStateCommand(g *globalOptions) *cobra.Command {
	c := &cobra.Command{
		Use:   "state",
		Short: "Show or reset the stored checkpoint of a sync",
		RunE: func(_ *cobra.Command, args []string) error {
			if len(args) > 0 {
				return &usageError{fmt.Errorf("unknown command %q for \"backflow state\": use show or reset", args[0])}
			}
			return &usageError{errors.New("backflow state needs a command: show or reset")}
		},
	}
	var asJSON, allSyncs bool
	var showShard, resetShard string
	show := &cobra.Command{
		Use:   "show",
		Short: "Print the sync's checkpoint (and its shards'): what every destination acknowledged",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return eachSync(g, allSyncs, func() error { return runStateShow(cmd, g, asJSON, showShard) })
		},
	}
	addAllFlag(show, &allSyncs)
	show.Flags().BoolVar(&asJSON, "json", false, "print the checkpoint as JSON (null when there is none)")
	show.Flags().StringVar(&showShard, "shard", "", "the checkpoint of shard I/N only (`sync --shard`); the table shows every shard's")
	var yes bool
	reset := &cobra.Command{
		Use:   "reset",
		Short: "Delete the sync's checkpoint and row hashes: the next run is a full sync",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runStateReset(cmd, g, yes, resetShard)
		},
	}
	reset.Flags().BoolVarP(&yes, "yes", "y", false, "do not ask for confirmation on a terminal")
	reset.Flags().StringVar(&resetShard, "shard", "", "reset only this shard's state (I/N); default: the sync's and every shard's")
	c.AddCommand(show, reset)
	return c
}

func runStateShow(cmd *cobra.Command, g *globalOptions, asJSON bool, shardFlag string) error {
	ctx := cmd.Context()
	cfg, s, err := g.loadSync()
	if err != nil {
		return err
	}
	var only pipeline.Shard
	if shardFlag != "" {
		if only, err = pipeline.ParseShard(shardFlag); err != nil {
			return &usageError{fmt.Errorf("--shard: %w", err)}
		}
	}
	store, err := openStore(ctx, cfg)
	if err != nil {
		return err
	}
	cp, err := store.Load(ctx, only.StateName(s.Name))
	if err != nil {
		return err
	}
	out := cmd.OutOrStdout()
	if asJSON {
		// One shape: the checkpoint (the sync's, or that shard's), or null.
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(cp)
	}
	if only.Sharded() {
		return printCheckpoint(out, s, store.String(), "shard "+only.String()+" of sync "+s.Name, cp)
	}
	// The checkpoints of the sync's shards (`sync --shard I/N`), each its own.
	type shardState struct {
		Shard      string            `json:"shard"`
		Checkpoint *state.Checkpoint `json:"checkpoint"`
	}
	var shards []shardState
	states, err := store.States(ctx, s.Name)
	if err != nil {
		return err
	}
	for _, st := range states {
		_, shard, err := pipeline.ParseStateName(st.Name)
		if err != nil || !shard.Sharded() {
			continue
		}
		scp, err := store.Load(ctx, st.Name)
		if err != nil {
			return err
		}
		if scp != nil {
			shards = append(shards, shardState{Shard: shard.String(), Checkpoint: scp})
		}
	}
	for _, sh := range shards {
		if err := printCheckpoint(out, s, store.String(), "shard "+sh.Shard+" of sync "+s.Name, sh.Checkpoint); err != nil {
			return err
		}
		fmt.Fprintln(out)
	}
	if cp == nil && len(shards) > 0 {
		return nil
	}
	return printCheckpoint(out, s, store.String(), "sync "+s.Name, cp)
}

// printCheckpoint prints one checkpoint (the sync's or a shard's) as a table.
func printCheckpoint(out io.Writer, s *config.Sync, where, what string, cp *state.Checkpoint) error {
	if cp == nil {
		fmt.Fprintf(out, "Sync %s has no checkpoint in %s: the next run is a first sync.\n", s.Name, where)
		return nil
	}
	fmt.Fprintf(out, "%s, checkpoint in %s, updated %s by run %s\n", capitalize(what), where, cp.UpdatedAt.Format("2006-01-02T15:04:05Z07:00"), cp.LastRunID)
	fmt.Fprintf(out, "fingerprints: mapping %s, source %s, schema %s\n\n", cp.MappingFingerprint, cp.SourceFingerprint, cp.SchemaFingerprint)
	var names []string
	for _, d := range s.Destinations {
		names = append(names, d.Name)
	}
	keys := make([]string, 0, len(cp.Files))
	for k := range cp.Files {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	header := []string{"KEY", "BYTES", "ROWS", "ACKNOWLEDGED", "DONE"}
	var rows [][]string
	done := 0
	for _, k := range keys {
		f := cp.Files[k]
		var acks []string
		for _, n := range names {
			acks = append(acks, fmt.Sprintf("%s=%d", n, f.Acked[n]))
		}
		isDone := f.Rows >= 0 && f.Done(names)
		if isDone {
			done++
		}
		rows = append(rows, []string{k, strconv.FormatInt(f.Size, 10), strconv.FormatInt(f.Rows, 10), strings.Join(acks, " "), strconv.FormatBool(isDone)})
	}
	if err := render.Table(out, header, rows, 80); err != nil {
		return err
	}
	fmt.Fprintf(out, "\n%d files, %d done\n", len(keys), done)
	return nil
}

func runStateReset(cmd *cobra.Command, g *globalOptions, yes bool, shardFlag string) error {
	ctx := cmd.Context()
	cfg, s, err := g.loadSync()
	if err != nil {
		return err
	}
	names := []string{s.Name}
	if shardFlag != "" {
		shard, err := pipeline.ParseShard(shardFlag)
		if err != nil {
			return &usageError{fmt.Errorf("--shard: %w", err)}
		}
		names = []string{shard.StateName(s.Name)}
	}
	store, err := openStore(ctx, cfg)
	if err != nil {
		return err
	}
	if shardFlag == "" {
		// The sync's state and every shard's.
		states, err := store.States(ctx, s.Name)
		if err != nil {
			return err
		}
		for _, st := range states {
			if st.Name != s.Name {
				names = append(names, st.Name)
			}
		}
	}
	// What there is to reset: the checkpoints that exist among names.
	existing := 0
	for _, name := range names {
		cp, err := store.Load(ctx, name)
		if err != nil {
			return err
		}
		if cp != nil {
			existing++
		}
	}
	what := "the checkpoint of sync " + s.Name
	switch {
	case shardFlag != "":
		what = "the checkpoint of shard " + shardFlag + " of sync " + s.Name
	case len(names) > 1:
		what = fmt.Sprintf("the checkpoints of sync %s and its %d shard states", s.Name, len(names)-1)
	}
	out := cmd.OutOrStdout()
	// A reset makes the next run send everything again: on a terminal, ask first.
	if existing > 0 && !yes && isTerminal(cmd.InOrStdin()) {
		fmt.Fprintf(out, "Reset %s in %s? The next run sends every row again. [y/N] ", what, store.String())
		answer, _ := bufio.NewReader(cmd.InOrStdin()).ReadString('\n')
		if a := strings.ToLower(strings.TrimSpace(answer)); a != "y" && a != "yes" {
			fmt.Fprintln(out, "Nothing reset.")
			return nil
		}
	}
	// Reset also when there is no checkpoint: row hashes of an earlier run may remain.
	for _, name := range names {
		if err := store.Reset(ctx, name); err != nil {
			return fmt.Errorf("resetting state of sync %s: %w", name, err)
		}
	}
	if existing == 0 {
		fmt.Fprintf(out, "Sync %s had no checkpoint in %s: nothing to reset; the next run is a first sync.\n", s.Name, store.String())
		return nil
	}
	fmt.Fprintf(out, "Reset %s in %s: the next run is a full sync.\n", what, store.String())
	return nil
}

func capitalize(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}
