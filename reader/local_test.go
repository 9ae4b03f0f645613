package reader

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/backflowhq/backflow/config"
)

func writeFile(t *testing.T, dir, rel string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, filepath.FromSlash(rel))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func newLocal(t *testing.T, url, include, partition string) Source {
	t.Helper()
	src, err := NewSource(context.Background(), config.Source{URL: url, Include: include, Partition: partition})
	if err != nil {
		t.Fatalf("NewSource(%q): %v", url, err)
	}
	return src
}

func TestLocalList(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "b.parquet", []byte("bbbb"))
	writeFile(t, dir, "a.x/z.parquet", []byte("zz")) // "a.x/…" sorts before "a/…"
	writeFile(t, dir, "a/c.parquet", []byte("c"))
	writeFile(t, dir, "dt=2025-01-01/part-0.parquet", []byte("p0"))
	writeFile(t, dir, "notes.txt", []byte("hello"))
	writeFile(t, dir, "empty.parquet", nil)
	writeFile(t, dir, "_tmp/x.parquet", []byte("x"))
	outside := t.TempDir()
	writeFile(t, outside, "far.parquet", []byte("far"))
	writeFile(t, outside, "sub/deep.parquet", []byte("deep"))
	if err := os.Symlink(filepath.Join(outside, "far.parquet"), filepath.Join(dir, "link.parquet")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(outside, "sub"), filepath.Join(dir, "linkdir")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(dir, "nowhere"), filepath.Join(dir, "broken.parquet")); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(dir, "pipe.parquet"), 0o644); err != nil {
		t.Fatal(err)
	}

	src := newLocal(t, dir, "", "")
	if src.String() != dir {
		t.Errorf("String() = %q, want %q", src.String(), dir)
	}
	l, err := src.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"a.x/z.parquet", "a/c.parquet", "b.parquet", "dt=2025-01-01/part-0.parquet", "link.parquet"}
	if got := keysOf(l); !reflect.DeepEqual(got, want) {
		t.Fatalf("objects = %q, want %q", got, want)
	}
	sk := skippedOf(l)
	for key, reason := range map[string]string{
		"notes.txt":      "not a Parquet file",
		"empty.parquet":  "empty object",
		"_tmp/x.parquet": "hidden",
		"linkdir":        "symbolic link to a directory (not followed)",
		"broken.parquet": "broken symbolic link",
		"pipe.parquet":   "not a regular file",
	} {
		if !strings.HasPrefix(sk[key], reason) {
			t.Errorf("skipped[%q] = %q, want prefix %q", key, sk[key], reason)
		}
	}
	if len(l.Skipped) != 6 {
		t.Errorf("skipped = %v, want 6 entries", l.Skipped)
	}
	for i := 1; i < len(l.Skipped); i++ {
		if l.Skipped[i-1].Key > l.Skipped[i].Key {
			t.Fatalf("skipped not sorted: %v", l.Skipped)
		}
	}
	byKey := map[string]Object{}
	for _, o := range l.Objects {
		byKey[o.Key] = o
	}
	if o := byKey["link.parquet"]; o.Size != 3 {
		t.Errorf("symlinked file: size %d, want the target's 3", o.Size)
	}
	if o := byKey["b.parquet"]; o.Size != 4 || len(o.ETag) != 32 || o.LastModified.IsZero() || o.VersionID != "" {
		t.Errorf("b.parquet = %+v", o)
	}

	// The ETag is stable, and changes when the file does.
	l2, err := src.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(l, l2) {
		t.Fatalf("two listings differ:\n%+v\n%+v", l, l2)
	}
	p := filepath.Join(dir, "b.parquet")
	future := time.Now().Add(time.Hour)
	if err := os.Chtimes(p, future, future); err != nil {
		t.Fatal(err)
	}
	l3, err := src.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range l3.Objects {
		if o.Key == "b.parquet" && o.ETag == byKey["b.parquet"].ETag {
			t.Errorf("ETag unchanged after the mtime changed")
		}
	}
}

func TestLocalURLForms(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "x/a.parquet", []byte("a"))
	for _, u := range []string{dir, "file://" + dir, "file://localhost" + dir, dir + "/"} {
		l, err := newLocal(t, u, "", "").List(context.Background())
		if err != nil {
			t.Fatalf("%s: %v", u, err)
		}
		if got := keysOf(l); !reflect.DeepEqual(got, []string{"x/a.parquet"}) {
			t.Errorf("%s: objects %q", u, got)
		}
	}
	// The directory may itself be a symbolic link.
	link := filepath.Join(t.TempDir(), "data")
	if err := os.Symlink(dir, link); err != nil {
		t.Fatal(err)
	}
	l, err := newLocal(t, link, "", "").List(context.Background())
	if err != nil || len(l.Objects) != 1 {
		t.Fatalf("symlinked directory: %+v, %v", l, err)
	}
	for _, u := range []string{"file://host/dir", "gs://bucket/x", ""} {
		if _, err := NewSource(context.Background(), config.Source{URL: u}); err == nil {
			t.Errorf("NewSource(%q) accepted it", u)
		}
	}
	if _, err := NewSource(context.Background(), config.Source{URL: dir, Include: "["}); err == nil || !strings.Contains(err.Error(), `"["`) {
		t.Errorf("bad include: %v", err)
	}
}

func TestLocalPartitionLatest(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "dt=2025-01-9/a.parquet", []byte("a"))
	writeFile(t, dir, "dt=2025-01-10/b.parquet", []byte("b"))
	l, err := newLocal(t, dir, "", "latest").List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if got := keysOf(l); !reflect.DeepEqual(got, []string{"dt=2025-01-10/b.parquet"}) {
		t.Fatalf("objects = %q", got)
	}
	if got := skippedOf(l)["dt=2025-01-9/a.parquet"]; got != "older partition (latest is dt=2025-01-10/)" {
		t.Errorf("reason = %q", got)
	}
}

func TestLocalMissingDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "nope")
	_, err := newLocal(t, dir, "", "").List(context.Background())
	var se *SourceError
	if !errors.As(err, &se) {
		t.Fatalf("want *SourceError, got %T %v", err, err)
	}
	if want := "source " + dir + ": no such directory"; err.Error() != want {
		t.Errorf("error = %q, want %q", err, want)
	}
	file := writeFile(t, t.TempDir(), "f.parquet", []byte("x"))
	_, err = newLocal(t, file, "", "").List(context.Background())
	if !errors.As(err, &se) || !strings.HasSuffix(err.Error(), "not a directory") {
		t.Errorf("file as directory: %v", err)
	}
}

func TestLocalUnreadableFolder(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root reads every folder")
	}
	dir := t.TempDir()
	writeFile(t, dir, "locked/a.parquet", []byte("a"))
	if err := os.Chmod(filepath.Join(dir, "locked"), 0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Chmod(filepath.Join(dir, "locked"), 0o755) })
	_, err := newLocal(t, dir, "", "").List(context.Background())
	var se *SourceError
	if !errors.As(err, &se) || !strings.Contains(err.Error(), "permission denied") {
		t.Fatalf("want a SourceError about permissions, got %v", err)
	}
}

func TestLocalOpen(t *testing.T) {
	dir := t.TempDir()
	data := bytes.Repeat([]byte("0123456789"), 1000)
	writeFile(t, dir, "d/a.parquet", data)
	src := newLocal(t, dir, "", "")
	ctx := context.Background()
	l, err := src.List(ctx)
	if err != nil || len(l.Objects) != 1 {
		t.Fatalf("list: %+v %v", l, err)
	}
	obj := l.Objects[0]
	blob, err := src.Open(ctx, obj)
	if err != nil {
		t.Fatal(err)
	}
	defer blob.Close()
	if blob.Size() != int64(len(data)) {
		t.Fatalf("Size() = %d", blob.Size())
	}
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			off := int64(i * 997)
			buf := make([]byte, 1500)
			n, err := blob.ReadAt(buf, off)
			if err != nil || !bytes.Equal(buf[:n], data[off:off+1500]) {
				t.Errorf("ReadAt(%d): n=%d err=%v", off, n, err)
			}
		})
	}
	wg.Wait()
	buf := make([]byte, 100)
	n, err := blob.ReadAt(buf, int64(len(data))-10)
	if n != 10 || err != io.EOF || !bytes.Equal(buf[:n], data[len(data)-10:]) {
		t.Errorf("read over the end: n=%d err=%v", n, err)
	}

	// Reads stop at the listed size even if the file grew.
	small := obj
	small.Size, small.ETag = 5, ""
	b2, err := src.Open(ctx, small)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := b2.ReadAt(buf, 0); n != 5 || err != io.EOF {
		t.Errorf("read of a 5-byte view: n=%d err=%v", n, err)
	}
	b2.Close()
	if _, err := b2.ReadAt(buf, 0); !errors.Is(err, os.ErrClosed) {
		t.Errorf("read after Close: %v", err)
	}

	// A rewritten file is not read as the listed one.
	future := time.Now().Add(time.Hour)
	if err := os.Chtimes(filepath.Join(dir, "d", "a.parquet"), future, future); err != nil {
		t.Fatal(err)
	}
	_, err = src.Open(ctx, obj)
	if !errors.Is(err, ErrChanged) || errors.Is(err, ErrNotFound) {
		t.Errorf("changed file: %v", err)
	}

	// A vanished file is ErrNotFound, in one line naming it.
	if err := os.Remove(filepath.Join(dir, "d", "a.parquet")); err != nil {
		t.Fatal(err)
	}
	_, err = src.Open(ctx, obj)
	var se *SourceError
	if !errors.Is(err, ErrNotFound) || !errors.As(err, &se) {
		t.Fatalf("vanished file: %T %v", err, err)
	}
	if want := dir + "/d/a.parquet: no such file"; err.Error() != want {
		t.Errorf("error = %q, want %q", err, want)
	}

	for _, key := range []string{"../x.parquet", "/etc/passwd", "a//b", ""} {
		if _, err := src.Open(ctx, Object{Key: key, Size: 1}); err == nil {
			t.Errorf("Open(%q) accepted the key", key)
		}
	}
}
