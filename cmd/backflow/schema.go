package main

import (
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/backflowhq/backflow/internal/render"
	"github.com/backflowhq/backflow/pipeline"
)

type schemaOptions struct {
	json bool
}

func newSchemaCommand(g *globalOptions) *cobra.Command {
	var o schemaOptions
	c := &cobra.Command{
		Use:   "schema",
		Short: "List the files that would be read, the inferred schema and each file's validation",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runSchema(cmd, g, o)
		},
	}
	c.Flags().BoolVar(&o.json, "json", false, "print one JSON object")
	return c
}

func runSchema(cmd *cobra.Command, g *globalOptions, o schemaOptions) error {
	_, s, err := g.loadSync()
	if err != nil {
		return err
	}
	rep, err := pipeline.Inspect(cmd.Context(), s, pipeline.InspectOptions{})
	if err != nil {
		return err
	}
	out := cmd.OutOrStdout()
	if o.json {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
	} else {
		from := ""
		if rep.SchemaFrom != "" {
			from = " (from " + rep.SchemaFrom + ")"
		}
		fmt.Fprintf(out, "Sync %s: %s%s\n\n", rep.Sync, render.Plural(len(rep.Columns), "column"), from)
		rows := make([][]string, len(rep.Columns))
		for i, c := range rep.Columns {
			rows[i] = []string{c.Name, c.Parquet, c.JSON}
		}
		if err := render.Table(out, []string{"COLUMN", "PARQUET", "JSON"}, rows, 60); err != nil {
			return err
		}
		fmt.Fprintf(out, "\n%s\n\n", render.Plural(len(rep.Files), "file"))
		rows = rows[:0]
		for _, f := range rep.Files {
			status := "ok"
			if !f.Valid {
				status = "INVALID: " + f.Error
			}
			rows = append(rows, []string{f.Key, strconv.FormatInt(f.Size, 10), strconv.FormatInt(f.Rows, 10), strconv.Itoa(f.RowGroups), status})
		}
		if err := render.Table(out, []string{"KEY", "BYTES", "ROWS", "ROW GROUPS", "VALIDATION"}, rows, 120); err != nil {
			return err
		}
		if len(rep.Skipped) > 0 {
			fmt.Fprintf(out, "\n%s skipped\n\n", render.Plural(len(rep.Skipped), "object"))
			rows = rows[:0]
			for _, sk := range rep.Skipped {
				rows = append(rows, []string{sk.Key, sk.Reason})
			}
			if err := render.Table(out, []string{"KEY", "REASON"}, rows, 120); err != nil {
				return err
			}
		}
	}
	if n := rep.Invalid(); n > 0 {
		for _, f := range rep.Files {
			if !f.Valid {
				fmt.Fprintf(g.stderr, "backflow: %s\n", scrub(f.Error, g))
			}
		}
		return &exitError{code: exitPartial}
	}
	return nil
}
