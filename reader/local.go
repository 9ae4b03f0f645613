package reader

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"time"

	"github.com/backflowhq/backflow/config"
)

// LocalSource reads Parquet files below a local directory. Keys are slash-separated
// paths relative to the directory; symbolic links to files are followed, symbolic links
// to directories are not (they could loop or leave the directory).
type LocalSource struct {
	dir    string
	filter Filter
}

var _ Source = (*LocalSource)(nil)

// NewLocalSource returns the source of a local directory (cfg.URL is a path or a
// file:// URL). The directory is only looked at by List.
func NewLocalSource(cfg config.Source) (*LocalSource, error) {
	dir, err := localPath(cfg.URL)
	if err != nil {
		return nil, err
	}
	f, err := NewFilter(cfg.Include, cfg.Partition)
	if err != nil {
		return nil, fmt.Errorf("source %s: %w", dir, err)
	}
	return &LocalSource{dir: dir, filter: f}, nil
}

// String is the directory's absolute path.
func (s *LocalSource) String() string { return s.dir }

// List walks the directory recursively.
func (s *LocalSource) List(ctx context.Context) (Listing, error) {
	fail := func(err error) (Listing, error) { return Listing{}, &SourceError{URL: s.dir, Err: err} }
	info, err := os.Stat(s.dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fail(fmt.Errorf("source %s: no such directory", s.dir))
	case err != nil:
		return fail(fmt.Errorf("source %s: %w", s.dir, unwrapPathError(err)))
	case !info.IsDir():
		return fail(fmt.Errorf("source %s: not a directory", s.dir))
	}

	// The directory itself may be a symbolic link (/data -> /mnt/data): walk its target,
	// which WalkDir would otherwise report as a single non-directory entry.
	root, err := filepath.EvalSymlinks(s.dir)
	if err != nil {
		return fail(fmt.Errorf("source %s: %w", s.dir, unwrapPathError(err)))
	}
	var objs []Object
	var skipped []Skipped
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			// A folder we cannot read would silently hide files (and, with
			// partition: latest, a whole partition): fail rather than guess.
			return fmt.Errorf("source %s: %w", s.dir, err)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if p == root || d.IsDir() {
			return nil
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return fmt.Errorf("source %s: %w", s.dir, err)
		}
		key := filepath.ToSlash(rel)
		info, err := d.Info()
		if errors.Is(err, fs.ErrNotExist) {
			return nil // removed while we walked: it is not part of this listing
		}
		if err != nil {
			return fmt.Errorf("source %s: %w", s.dir, err)
		}
		if info.Mode()&fs.ModeSymlink != 0 {
			target, err := os.Stat(p)
			switch {
			case err != nil:
				skipped = append(skipped, Skipped{Key: key, Reason: "broken symbolic link"})
				return nil
			case target.IsDir():
				skipped = append(skipped, Skipped{Key: key, Reason: "symbolic link to a directory (not followed)"})
				return nil
			}
			info = target
		}
		if !info.Mode().IsRegular() {
			skipped = append(skipped, Skipped{Key: key, Reason: "not a regular file"})
			return nil
		}
		objs = append(objs, Object{
			Key:          key,
			Size:         info.Size(),
			ETag:         localETag(info.Size(), info.ModTime()),
			LastModified: info.ModTime().UTC(),
		})
		return nil
	})
	if err != nil {
		if ctx.Err() != nil {
			return Listing{}, err
		}
		return fail(err)
	}
	l := s.filter.Apply("", objs)
	if len(skipped) > 0 {
		l.Skipped = append(l.Skipped, skipped...)
		sort.SliceStable(l.Skipped, func(i, j int) bool { return l.Skipped[i].Key < l.Skipped[j].Key })
	}
	return l, nil
}

// Open opens the file obj names. It fails with ErrNotFound when the file is gone and with
// ErrChanged when its size or mtime no longer give obj.ETag (when obj has one). Reads
// stop at obj.Size, the size the listing saw.
func (s *LocalSource) Open(ctx context.Context, obj Object) (Blob, error) {
	where := s.dir + "/" + obj.Key
	if !fs.ValidPath(obj.Key) || obj.Key == "." {
		return nil, fmt.Errorf("source %s: invalid key %q", s.dir, obj.Key)
	}
	if obj.Size < 0 {
		return nil, fmt.Errorf("%s: negative size %d", where, obj.Size)
	}
	p := filepath.Join(s.dir, filepath.FromSlash(obj.Key))
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, &SourceError{URL: s.dir, Err: &objectError{msg: where + ": no such file", err: err, kind: ErrNotFound}}
	}
	if err != nil {
		return nil, &SourceError{URL: s.dir, Err: fmt.Errorf("%s: %w", where, unwrapPathError(err))}
	}
	info, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, &SourceError{URL: s.dir, Err: fmt.Errorf("%s: %w", where, unwrapPathError(err))}
	}
	if !info.Mode().IsRegular() {
		f.Close()
		return nil, &SourceError{URL: s.dir, Err: fmt.Errorf("%s: not a regular file", where)}
	}
	if obj.ETag != "" && localETag(info.Size(), info.ModTime()) != obj.ETag {
		f.Close()
		return nil, &SourceError{URL: s.dir, Err: &objectError{
			msg:  fmt.Sprintf("%s: changed since it was listed (size or modification time differ)", where),
			err:  fmt.Errorf("etag %s, listed %s", localETag(info.Size(), info.ModTime()), obj.ETag),
			kind: ErrChanged,
		}}
	}
	return &localBlob{f: f, r: io.NewSectionReader(f, 0, obj.Size), size: obj.Size, dir: s.dir, where: where}, nil
}

// localETag identifies a version of a local file by its size and modification time: a
// rewrite changes at least one of them, and hashing them is far cheaper than hashing data.
func localETag(size int64, mtime time.Time) string {
	h := sha256.Sum256([]byte(strconv.FormatInt(size, 10) + ":" + strconv.FormatInt(mtime.UnixNano(), 10)))
	return hex.EncodeToString(h[:16])
}

// unwrapPathError drops *fs.PathError's repetition of the path we already name.
func unwrapPathError(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// localBlob is an open local file; ReadAt is pread, safe for concurrent use.
type localBlob struct {
	f          *os.File
	r          *io.SectionReader
	size       int64
	dir, where string
}

func (b *localBlob) ReadAt(p []byte, off int64) (int, error) {
	n, err := b.r.ReadAt(p, off)
	if err != nil && err != io.EOF {
		// A disk error is the source's failure, not a bad file.
		return n, &SourceError{URL: b.dir, Err: fmt.Errorf("reading %s: %w", b.where, unwrapPathError(err))}
	}
	return n, err
}

func (b *localBlob) Size() int64  { return b.size }
func (b *localBlob) Close() error { return b.f.Close() }
