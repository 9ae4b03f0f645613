package testutil

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// EnvParquetTesting names a checkout of Apache's parquet-testing files (CI sets it).
const EnvParquetTesting = "BACKFLOW_PARQUET_TESTING"

// CorpusFiles lists the Parquet files (plain and encrypted) under the given folders of the
// parquet-testing checkout (default "data" and "bad_data"), sorted, with the checkout's
// root. The test is skipped when BACKFLOW_PARQUET_TESTING is unset and fails when it is
// set but a folder is missing or holds no Parquet file: CI must never skip the corpus.
func CorpusFiles(t testing.TB, folders ...string) (root string, paths []string) {
	t.Helper()
	root = os.Getenv(EnvParquetTesting)
	if root == "" {
		t.Skip(EnvParquetTesting + " is not set")
	}
	if len(folders) == 0 {
		folders = []string{"data", "bad_data"}
	}
	for _, sub := range folders {
		dir := filepath.Join(root, sub)
		if _, err := os.Stat(dir); err != nil {
			t.Fatalf("%s is set but unusable: %v", EnvParquetTesting, err)
		}
		err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if !d.IsDir() && (strings.HasSuffix(p, ".parquet") || strings.HasSuffix(p, ".parquet.encrypted")) {
				paths = append(paths, p)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("listing %s: %v", dir, err)
		}
	}
	if len(paths) == 0 {
		t.Fatalf("%s: no Parquet files under %s", EnvParquetTesting, root)
	}
	return root, paths
}
