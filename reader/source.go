package reader

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/internal/s3conn"
)

// ErrNotFound matches (errors.Is) the error of reading an object that vanished after it
// was listed.
var ErrNotFound = errors.New("object not found")

// ErrChanged matches (errors.Is) the error of reading an object that was replaced after it
// was listed (its ETag, or for a local file its size and mtime, differ from the listing's),
// so that a file is never read half from one version and half from another.
var ErrChanged = errors.New("object changed since it was listed")

// SourceError is a failure of the source itself — no such bucket or directory, access
// denied, bad credentials, an unreachable endpoint, an object that vanished — as
// opposed to a bad file. It fails the run (exit code 1). Its message is one line that
// names the location and never holds a secret.
type SourceError struct {
	URL string // the source, as Source.String gives it
	Err error
}

func (e *SourceError) Error() string { return e.Err.Error() }
func (e *SourceError) Unwrap() error { return e.Err }

// objectError is a one-line error that also matches a sentinel (ErrNotFound, ErrChanged).
type objectError struct {
	msg  string
	err  error
	kind error
}

func (e *objectError) Error() string   { return e.msg }
func (e *objectError) Unwrap() []error { return []error{e.err, e.kind} }

// NewSource returns the source cfg names: an S3 prefix (s3://bucket/prefix) or a local
// directory (an absolute path, or a file:// URL). It checks the include pattern and the
// partition mode, and builds the S3 client, without listing anything yet.
func NewSource(ctx context.Context, cfg config.Source) (Source, error) {
	if s3conn.IsURL(cfg.URL) {
		return NewS3Source(ctx, cfg, 0)
	}
	return NewLocalSource(cfg)
}

// localPath turns a source URL that is not s3:// into a clean absolute directory path.
func localPath(u string) (string, error) {
	p := u
	if rest, ok := strings.CutPrefix(u, "file://"); ok {
		// file:///abs/dir; "file://host/dir" names another machine, which we cannot read.
		if !strings.HasPrefix(rest, "/") {
			if host, dir, found := strings.Cut(rest, "/"); found && host == "localhost" {
				rest = "/" + dir
			} else {
				return "", fmt.Errorf("source url %q: want file:///absolute/path", u)
			}
		}
		p = rest
	} else if i := strings.Index(u, "://"); i > 0 && !strings.ContainsAny(u[:i], `/\`) {
		return "", fmt.Errorf("source url %q: unsupported scheme %q (want s3://bucket/prefix or a local directory)", u, u[:i])
	}
	if p == "" {
		return "", errors.New("source url is empty")
	}
	abs, err := filepath.Abs(filepath.FromSlash(p))
	if err != nil {
		return "", fmt.Errorf("source url %q: %w", u, err)
	}
	return abs, nil
}
