package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/backflowhq/backflow/internal/render"
	"github.com/backflowhq/backflow/pipeline"
)

type previewOptions struct {
	rows    int
	columns string
	search  string
	json    bool
}

func newPreviewCommand(g *globalOptions) *cobra.Command {
	var o previewOptions
	c := &cobra.Command{
		Use:   "preview",
		Short: "Print the first rows and the message each becomes; sends nothing, writes no state",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runPreview(cmd, g, o)
		},
	}
	f := c.Flags()
	f.IntVarP(&o.rows, "rows", "n", 10, "how many rows")
	f.StringVar(&o.columns, "columns", "", "only these columns in the table (comma-separated)")
	f.StringVar(&o.search, "search", "", "only the columns whose name contains this text (case-insensitive); it matches column names, not values")
	f.BoolVar(&o.json, "json", false, "print only the messages, one JSON object per line (rejected rows and skipped files are named on stderr)")
	return c
}

func runPreview(cmd *cobra.Command, g *globalOptions, o previewOptions) error {
	if o.rows < 1 {
		return &usageError{fmt.Errorf("-n %d: want at least 1 row", o.rows)}
	}
	_, s, err := g.loadSync()
	if err != nil {
		return err
	}
	po := pipeline.PreviewOptions{Rows: o.rows, Search: o.search, Version: version}
	if o.columns != "" {
		po.Columns = strings.Split(o.columns, ",")
	}
	res, err := pipeline.Preview(cmd.Context(), s, po)
	if err != nil {
		return err
	}
	out := cmd.OutOrStdout()
	for _, p := range res.Problems {
		fmt.Fprintf(g.stderr, "backflow: skipped %s\n", scrub(p.Error, g))
	}
	if o.json {
		// stdout holds only messages; what is left out is said on stderr, so that a
		// short output is never mistaken for the whole preview.
		for i, m := range res.Messages {
			if m == nil {
				fmt.Fprintf(g.stderr, "backflow: left out row %d (%s): rejected: %s\n", i+1, res.Files[i], scrub(res.Reasons[i], g))
				continue
			}
			out.Write(m)
			out.Write([]byte{'\n'})
		}
		return nil
	}
	if len(res.Rows) == 0 {
		fmt.Fprintf(out, "Sync %s: no rows to preview\n", res.Sync)
		return nil
	}
	if len(res.Rows) == 1 {
		fmt.Fprintf(out, "Sync %s: the first row\n\n", res.Sync)
	} else {
		fmt.Fprintf(out, "Sync %s: the first %d rows\n\n", res.Sync, len(res.Rows))
	}
	header := append([]string{"#"}, res.Columns...)
	rows := make([][]string, len(res.Rows))
	for i, r := range res.Rows {
		rows[i] = append([]string{fmt.Sprint(i + 1)}, r...)
	}
	if err := render.Table(out, header, rows, 32); err != nil {
		return err
	}
	fmt.Fprintln(out)
	for i, m := range res.Messages {
		if m == nil {
			fmt.Fprintf(out, "Row %d (%s) is rejected: %s\n\n", i+1, res.Files[i], res.Reasons[i])
			continue
		}
		var pretty bytes.Buffer
		if err := json.Indent(&pretty, m, "", "  "); err != nil {
			pretty.Reset()
			pretty.Write(m)
		}
		fmt.Fprintf(out, "Row %d (%s) becomes:\n%s\n\n", i+1, res.Files[i], pretty.String())
	}
	return nil
}
