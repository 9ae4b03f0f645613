package config

import (
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
)

// schemeRE matches the scheme of a URL ("s3://", "gs://", "file://").
var schemeRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9+.-]*://`)

// IsS3URL tells whether u names an S3 location (s3://bucket/prefix).
func IsS3URL(u string) bool { return strings.HasPrefix(u, "s3://") }

// SplitS3URL splits s3://bucket/prefix into its bucket and prefix; ok is false when u
// is not an s3:// URL or has no bucket.
func SplitS3URL(u string) (bucket, prefix string, ok bool) {
	rest, found := strings.CutPrefix(u, "s3://")
	if !found {
		return "", "", false
	}
	bucket, prefix, _ = strings.Cut(rest, "/")
	return bucket, prefix, bucket != ""
}

// localPath turns a local location — a plain path or a file:// URL — into an absolute,
// clean path, relative ones taken from dir. ok is false for another scheme (gs://,
// https://) or a file:// URL naming a remote host.
func localPath(loc, dir string) (p string, ok bool) {
	if rest, found := strings.CutPrefix(loc, "file://"); found {
		// file:///abs, file://localhost/abs, file://./rel and file://rel/dir
		if h, after, cut := strings.Cut(rest, "/"); cut && h == "localhost" {
			rest = "/" + after
		}
		unescaped, err := url.PathUnescape(rest)
		if err != nil {
			return "", false
		}
		loc = unescaped
	} else if schemeRE.MatchString(loc) {
		return "", false
	}
	if loc == "" {
		return "", false
	}
	if !filepath.IsAbs(loc) {
		loc = filepath.Join(dir, loc)
	}
	return filepath.Clean(loc), true
}

// resolvePaths makes every local path of c absolute against c.Dir: the state
// directory, local sources and file destinations. Locations that are not local (s3://)
// or not valid are left for validation to report.
func resolvePaths(c *Config) {
	if !IsS3URL(c.State.URL) {
		if p, ok := localPath(c.State.URL, c.Dir); ok {
			c.State.URL = p
		}
	}
	for i := range c.Syncs {
		s := &c.Syncs[i]
		if s.Source.URL != "" && !IsS3URL(s.Source.URL) {
			if p, ok := localPath(s.Source.URL, c.Dir); ok {
				s.Source.URL = p
			}
		}
	}
}
