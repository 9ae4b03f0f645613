// Command gen writes the bundled example export (a "users" table as Parquet files).
//
//	go run ./testdata/gen -out examples/users/data -files 3 -rows 1000
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/backflowhq/backflow/internal/exampledata"
)

func main() {
	out := flag.String("out", "examples/users/data", "directory to write the Parquet files into")
	files := flag.Int("files", 3, "number of files")
	rows := flag.Int64("rows", 1000, "rows per file")
	rowGroup := flag.Int64("row-group", 64<<10, "rows per row group")
	seed := flag.Uint64("seed", 1, "random seed")
	flag.Parse()
	paths, err := exampledata.Write(*out, exampledata.Options{Files: *files, RowsPerFile: *rows, RowGroupRows: *rowGroup, Seed: *seed})
	if err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
	for _, p := range paths {
		fmt.Println(p)
	}
}
