package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/backflowhq/backflow/internal/render"
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
	show := &cobra.Command{
		Use:   "show",
		Short: "Print the sync's checkpoint: what every destination acknowledged",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return eachSync(g, allSyncs, func() error { return runStateShow(cmd, g, asJSON) })
		},
	}
	addAllFlag(show, &allSyncs)
	show.Flags().BoolVar(&asJSON, "json", false, "print the checkpoint as JSON (null when there is none)")
	var yes bool
	reset := &cobra.Command{
		Use:   "reset",
		Short: "Delete the sync's checkpoint and row hashes: the next run is a full sync",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runStateReset(cmd, g, yes)
		},
	}
	reset.Flags().BoolVarP(&yes, "yes", "y", false, "do not ask for confirmation on a terminal")
	c.AddCommand(show, reset)
	return c
}

func runStateShow(cmd *cobra.Command, g *globalOptions, asJSON bool) error {
	ctx := cmd.Context()
	cfg, s, err := g.loadSync()
	if err != nil {
		return err
	}
	store, err := openStore(ctx, cfg)
	if err != nil {
		return err
	}
	cp, err := store.Load(ctx, s.Name)
	if err != nil {
		return err
	}
	out := cmd.OutOrStdout()
	if asJSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		// One shape: the checkpoint, or null when there is none.
		return enc.Encode(cp)
	}
	if cp == nil {
		fmt.Fprintf(out, "Sync %s has no checkpoint in %s: the next run is a first sync.\n", s.Name, store.String())
		return nil
	}
	fmt.Fprintf(out, "Sync %s, checkpoint in %s, updated %s by run %s\n", s.Name, store.String(), cp.UpdatedAt.Format("2006-01-02T15:04:05Z07:00"), cp.LastRunID)
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

func runStateReset(cmd *cobra.Command, g *globalOptions, yes bool) error {
	ctx := cmd.Context()
	cfg, s, err := g.loadSync()
	if err != nil {
		return err
	}
	store, err := openStore(ctx, cfg)
	if err != nil {
		return err
	}
	cp, err := store.Load(ctx, s.Name)
	if err != nil {
		return err
	}
	out := cmd.OutOrStdout()
	// A reset makes the next run send everything again: on a terminal, ask first.
	if cp != nil && !yes && isTerminal(cmd.InOrStdin()) {
		fmt.Fprintf(out, "Reset the checkpoint of sync %s in %s? The next run sends every row again. [y/N] ", s.Name, store.String())
		answer, _ := bufio.NewReader(cmd.InOrStdin()).ReadString('\n')
		if a := strings.ToLower(strings.TrimSpace(answer)); a != "y" && a != "yes" {
			fmt.Fprintln(out, "Nothing reset.")
			return nil
		}
	}
	// Reset also when there is no checkpoint: row hashes of an earlier run may remain.
	if err := store.Reset(ctx, s.Name); err != nil {
		return fmt.Errorf("resetting state of sync %s: %w", s.Name, err)
	}
	if cp == nil {
		fmt.Fprintf(out, "Sync %s had no checkpoint in %s: nothing to reset; the next run is a first sync.\n", s.Name, store.String())
		return nil
	}
	fmt.Fprintf(out, "Reset the checkpoint of sync %s in %s: the next run is a full sync.\n", s.Name, store.String())
	return nil
}
