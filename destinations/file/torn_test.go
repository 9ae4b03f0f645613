package file

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCutTornLine(t *testing.T) {
	long := strings.Repeat("x", 100<<10) // longer than one read buffer
	for _, c := range []struct{ name, in, want string }{
		{"empty", "", ""},
		{"whole lines", "{\"a\":1}\n{\"b\":2}\n", "{\"a\":1}\n{\"b\":2}\n"},
		{"torn tail", "{\"a\":1}\n{\"b\":", "{\"a\":1}\n"},
		{"only a torn line", "{\"b\":", ""},
		{"torn tail longer than the buffer", "{\"a\":1}\n" + long, "{\"a\":1}\n"},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "out.jsonl")
			if err := os.WriteFile(p, []byte(c.in), 0o644); err != nil {
				t.Fatal(err)
			}
			f, err := os.OpenFile(p, os.O_RDWR|os.O_APPEND, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			size, err := cutTornLine(f, int64(len(c.in)))
			if err != nil {
				t.Fatal(err)
			}
			got, _ := os.ReadFile(p)
			if string(got) != c.want || size != int64(len(c.want)) {
				t.Fatalf("kept %q (size %d), want %q", got, size, c.want)
			}
		})
	}
}
