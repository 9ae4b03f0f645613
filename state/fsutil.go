package state

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

const (
	dirPerm  = 0o750
	filePerm = 0o600 // rejects and row hashes hold identifiers: not world-readable
	tmpInfix = ".tmp-"
)

// contentGeneration identifies a stored file that carries no generation token by its
// content, so that a hand-written checkpoint is still protected against a lost update.
func contentGeneration(data []byte) string {
	sum := sha256.Sum256(data)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// writeFileAtomic replaces path with data so that a crash at any moment leaves either the
// old or the new content: a temporary file in the same directory is written and fsynced,
// renamed over path, and the directory is fsynced so that the rename itself survives a
// power loss. The caller holds the file's lock, so any temporary file of path still
// present is a leftover of a crashed writer and is removed.
func writeFileAtomic(path string, data []byte) error {
	dir, base := filepath.Split(path)
	removeStaleTemps(dir, base)
	tmp, err := os.CreateTemp(dir, base+tmpInfix+"*")
	if err != nil {
		return err
	}
	committed := false
	defer func() {
		if !committed {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	if _, err := tmp.Write(data); err != nil {
		return fmt.Errorf("writing %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("closing %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	committed = true
	return syncDir(dir)
}

func removeStaleTemps(dir, base string) {
	matches, _ := filepath.Glob(filepath.Join(dir, base+tmpInfix+"*"))
	for _, m := range matches {
		if strings.HasPrefix(filepath.Base(m), base+tmpInfix) {
			_ = os.Remove(m)
		}
	}
}

// mkdirAll creates dir and fsyncs its parent when it had to create it, so that a file
// made durable inside it is reachable after a power loss.
func mkdirAll(dir string) error {
	if fi, err := os.Stat(dir); err == nil {
		if !fi.IsDir() {
			return fmt.Errorf("%s is not a directory", dir)
		}
		return nil
	}
	if err := os.MkdirAll(dir, dirPerm); err != nil {
		return err
	}
	return syncDir(filepath.Dir(dir))
}
