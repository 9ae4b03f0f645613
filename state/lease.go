package state

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/backflowhq/backflow/internal/s3conn"
)

// Holder describes the run that holds (or asks for) a sync's lease.
type Holder struct {
	Host  string    `json:"host"`
	PID   int       `json:"pid"`
	RunID string    `json:"run_id"`
	Since time.Time `json:"since"`
	// Expires is when an s3:// lease lapses unless renewed (zero for a local lock, and
	// for a lease released by its holder).
	Expires time.Time `json:"expires,omitzero"`
}

// ErrLeaseHeld is matched (errors.Is) by the error of Acquire when another run holds
// the lease.
var ErrLeaseHeld = errors.New("the sync's lease is held by another run")

// LeaseHeldError is returned by Acquire when another run holds the sync's lease.
type LeaseHeldError struct {
	Sync   string
	Holder Holder // zero when the holder could not be read
}

func (e *LeaseHeldError) Error() string {
	h := e.Holder
	what := e.Sync
	if sync, shard, ok := strings.Cut(e.Sync, ".shard-"); ok {
		// "users.shard-2-of-4" is shard 2/4 of sync users.
		what = sync + " shard " + strings.Replace(shard, "-of-", "/", 1)
	}
	if h.Host == "" && h.RunID == "" {
		return fmt.Sprintf("sync %s is running elsewhere (holder unknown)", what)
	}
	return fmt.Sprintf("sync %s is running elsewhere (host %s, pid %d, run %s, since %s)",
		what, h.Host, h.PID, h.RunID, h.Since.UTC().Format(time.RFC3339))
}

func (e *LeaseHeldError) Is(target error) bool { return target == ErrLeaseHeld }

// Lease is a sync's lease, held by one run from Acquire to Release: no other run of the
// sync, in this process or any other sharing the state, holds it meanwhile.
type Lease interface {
	// Lost is closed when the lease was lost while held (an s3:// lease that could not
	// be renewed before it expired, or that another run took over); Err says why. A
	// run must stop sending when it is closed.
	Lost() <-chan struct{}
	Err() error
	// Release gives the lease up; the next run may take it at once.
	Release(ctx context.Context) error
}

// Leaser is implemented by stores that keep leases (both of this package's).
type Leaser interface {
	// Acquire takes the sync's lease for holder, or returns a *LeaseHeldError naming the
	// run that holds it. ttl is how long an s3:// lease lasts unrenewed (it is renewed
	// every ttl/3 while held); a local lease is an OS file lock that ends with its
	// process, so ttl does not apply.
	Acquire(ctx context.Context, sync string, holder Holder, ttl time.Duration) (Lease, error)
}

// AcquireWait is Acquire that waits up to wait for a held lease, trying again every
// poll (and telling onWait once, with the holder, when it starts waiting).
func AcquireWait(ctx context.Context, l Leaser, sync string, holder Holder, ttl, wait, poll time.Duration, onWait func(*LeaseHeldError)) (Lease, error) {
	deadline := time.Now().Add(wait)
	told := false
	for {
		lease, err := l.Acquire(ctx, sync, holder, ttl)
		var held *LeaseHeldError
		if err == nil || !errors.As(err, &held) || wait <= 0 || time.Now().Add(poll).After(deadline) {
			if err != nil && held != nil && wait > 0 {
				return nil, fmt.Errorf("%w; gave up waiting after %s", err, wait)
			}
			return lease, err
		}
		if !told && onWait != nil {
			onWait(held)
			told = true
		}
		t := time.NewTimer(poll)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("waiting for the lease of sync %s: %w", sync, context.Cause(ctx))
		case <-t.C:
		}
	}
}

const leasesDir = "leases"

// HolderReader is implemented by stores that can say who holds a sync's lease (both of
// this package's): `serve` shows which replica runs a sync.
type HolderReader interface {
	// Holder returns the run that holds the sync's lease now, or (nil, nil) when no run
	// does. It only reads: it never takes, renews or breaks a lease, so it cannot make
	// a run find its lease held.
	Holder(ctx context.Context, sync string) (*Holder, error)
}

var (
	_ HolderReader = (*localStore)(nil)
	_ HolderReader = (*s3Store)(nil)
)

// Holder reads the description the holder wrote into <state>/leases/<sync>.lock. The
// lock itself is not tried, even shared: a run acquiring it meanwhile would find it
// busy. A file that is empty or half written (a run between its lock and its
// description, or releasing it), or whose holder ran on this machine and is gone
// (killed: the kernel dropped its lock, the file stayed), has no holder.
func (s *localStore) Holder(ctx context.Context, sync string) (*Holder, error) {
	if err := checkName("sync name", sync); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	path := filepath.Join(s.dir, leasesDir, sync+".lock")
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading lease %s: %w", path, err)
	}
	var h Holder
	if json.Unmarshal(bytes.TrimSpace(data), &h) != nil || (h.Host == "" && h.RunID == "") {
		return nil, nil
	}
	if host, _ := os.Hostname(); h.Host == host && processGone(h.PID) {
		return nil, nil
	}
	return &h, nil
}

// Holder reads the lease object: a lease released by its holder (no expiry) or expired
// by the clock of this process (as Acquire judges it) has no holder.
func (s *s3Store) Holder(ctx context.Context, sync string) (*Holder, error) {
	if err := checkName("sync name", sync); err != nil {
		return nil, err
	}
	key := s.key(leasesDir, sync+".json")
	data, _, found, err := s.get(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("reading the lease of sync %s: %w", sync, err)
	}
	if !found {
		return nil, nil
	}
	var h Holder
	if err := json.Unmarshal(data, &h); err != nil {
		return nil, &CorruptError{What: "lease", Where: s.url(key), Sync: sync, Err: err}
	}
	if h.Expires.IsZero() || !time.Now().Before(h.Expires) {
		return nil, nil
	}
	return &h, nil
}

// localLease is an exclusive flock on <state>/leases/<sync>.lock, held by an open file:
// the kernel releases it when the process ends, however it ends. The file holds the
// holder's description for the runs that find it locked.
type localLease struct {
	f         *os.File
	path, dir string // the lock file, and the state directory
	lost      chan struct{}
}

func (l *localLease) Lost() <-chan struct{} { return l.lost }
func (l *localLease) Err() error            { return nil }

func (l *localLease) Release(context.Context) error {
	if l.f == nil {
		return nil
	}
	// The file is removed while locked, so that a run leaves no trace in a state it did
	// not otherwise write (a configuration error); a run that opened it meanwhile finds,
	// once it holds the lock, that its file is no longer the one at the path, and tries
	// again (Acquire).
	_ = l.f.Truncate(0)
	rmErr := os.Remove(l.path)
	err := l.f.Close()
	l.f = nil
	if rmErr == nil {
		removeEmptyDirs(filepath.Dir(l.path), l.dir)
	}
	if err != nil {
		return fmt.Errorf("releasing the lease: %w", err)
	}
	return nil
}

func (s *localStore) Acquire(ctx context.Context, sync string, holder Holder, _ time.Duration) (Lease, error) {
	if err := checkName("sync name", sync); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	dir := filepath.Join(s.dir, leasesDir)
	if err := mkdirAll(dir); err != nil {
		return nil, fmt.Errorf("creating lease directory %s: %w", dir, err)
	}
	path := filepath.Join(dir, sync+".lock")
	var f *os.File
	for attempt := 0; ; attempt++ {
		var err error
		f, err = os.OpenFile(path, os.O_CREATE|os.O_RDWR, filePerm)
		if errors.Is(err, os.ErrNotExist) && attempt < 100 {
			// The holder before us removed the emptied directory as it released the
			// lease, between our mkdirAll and this open: make it again.
			if err := mkdirAll(dir); err != nil {
				return nil, fmt.Errorf("creating lease directory %s: %w", dir, err)
			}
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("opening lease %s: %w", path, err)
		}
		busy, err := tryLockFile(f)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("locking lease %s: %w", path, err)
		}
		if busy {
			data, _ := io.ReadAll(io.LimitReader(f, 4096))
			current, _ := isCurrent(f, path)
			f.Close()
			held := &LeaseHeldError{Sync: sync}
			if json.Unmarshal(bytes.TrimSpace(data), &held.Holder) != nil || !current {
				// Between the holder's lock and its description, or while it releases
				// the lease (it empties and removes the file): look again shortly.
				if attempt < 50 {
					if err := sleepCtx(ctx, 10*time.Millisecond); err != nil {
						return nil, err
					}
					continue
				}
			}
			return nil, held
		}
		// The holder before us removes the file as it releases it: the lock is ours
		// only if our file is still the one at the path.
		same, err := isCurrent(f, path)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("locking lease %s: %w", path, err)
		}
		if same {
			break
		}
		f.Close()
		if attempt >= 100 {
			return nil, fmt.Errorf("locking lease %s: the file kept being replaced", path)
		}
	}
	data, _ := json.Marshal(holder)
	err := f.Truncate(0)
	if err == nil {
		_, err = f.WriteAt(append(data, '\n'), 0)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("writing lease %s: %w", path, err)
	}
	return &localLease{f: f, path: path, dir: s.dir, lost: make(chan struct{})}, nil
}

// s3Lease is a lease object written with conditional PUTs: taken with If-None-Match when
// absent, or with If-Match over an expired (or released) one; renewed with If-Match every
// ttl/3. A holder that was killed stops renewing, and its lease lapses after ttl.
// Expiry is judged by the clock of the run that finds the lease: clocks of the machines
// sharing a state must agree to well within ttl.
type s3Lease struct {
	store  *s3Store
	key    string
	holder Holder
	ttl    time.Duration

	mu   sync.Mutex
	etag string
	err  error

	lost    chan struct{}
	stop    chan struct{}
	stopped chan struct{}
}

// leaseAttempts bounds Acquire's tries when other runs race for the same lease.
const leaseAttempts = 5

func (s *s3Store) Acquire(ctx context.Context, sync string, holder Holder, ttl time.Duration) (Lease, error) {
	if err := checkName("sync name", sync); err != nil {
		return nil, err
	}
	if ttl <= 0 {
		return nil, fmt.Errorf("lease of sync %s: the ttl must be positive", sync)
	}
	key := s.key(leasesDir, sync+".json")
	for range leaseAttempts {
		data, etag, found, err := s.get(ctx, key)
		if err != nil {
			return nil, fmt.Errorf("reading the lease of sync %s: %w", sync, err)
		}
		if found {
			var cur Holder
			if err := json.Unmarshal(data, &cur); err != nil {
				return nil, &CorruptError{What: "lease", Where: s.url(key), Sync: sync, Err: err}
			}
			if !cur.Expires.IsZero() && time.Now().Before(cur.Expires) {
				return nil, &LeaseHeldError{Sync: sync, Holder: cur}
			}
		} else {
			etag = ""
		}
		holder.Expires = time.Now().Add(ttl).UTC()
		body, _ := json.Marshal(holder)
		newETag, conflict, err := s.putConditional(ctx, key, body, etag, newGeneration())
		if err != nil {
			return nil, fmt.Errorf("taking the lease of sync %s: %w", sync, err)
		}
		if conflict {
			continue // another run took it in between: read who
		}
		l := &s3Lease{store: s, key: key, holder: holder, ttl: ttl, etag: newETag,
			lost: make(chan struct{}), stop: make(chan struct{}), stopped: make(chan struct{})}
		go l.renew()
		return l, nil
	}
	return nil, fmt.Errorf("taking the lease of sync %s: %s kept changing under %d attempts", sync, s.url(key), leaseAttempts)
}

func (l *s3Lease) Lost() <-chan struct{} { return l.lost }

func (l *s3Lease) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// renew extends the lease every ttl/3 until Release. A renewal that fails is tried
// again at the next tick; the lease is lost when another run wrote the object, or when
// no renewal succeeded by a quarter of the ttl before it expires. That quarter is the
// time the run has to stop sending (and the clocks to disagree) before another run may
// take the lease over at its expiry: the loss is signalled on time even while a renewal
// hangs, and a renewal still going by then is abandoned.
func (l *s3Lease) renew() {
	defer close(l.stopped)
	every := l.ttl / 3
	t := time.NewTicker(every)
	defer t.Stop()
	lostAt := l.holder.Expires.Add(-l.ttl / 4)
	var failed error // the last renewal's error
	for {
		deadline := time.NewTimer(time.Until(lostAt))
		select {
		case <-l.stop:
			deadline.Stop()
			return
		case <-deadline.C:
			why := "no renewal succeeded in time"
			if failed != nil {
				why = "renewing it failed: " + failed.Error()
			}
			l.lose(fmt.Errorf("lease %s expired: %s", l.store.url(l.key), why))
			return
		case <-t.C:
			deadline.Stop()
		}
		ctx, cancel := context.WithDeadline(context.Background(), minTime(time.Now().Add(every), lostAt))
		h := l.holder
		h.Expires = time.Now().Add(l.ttl).UTC()
		body, _ := json.Marshal(h)
		l.mu.Lock()
		etag := l.etag
		l.mu.Unlock()
		newETag, conflict, err := l.store.putConditional(ctx, l.key, body, etag, newGeneration())
		cancel()
		switch {
		case err == nil && !conflict:
			l.mu.Lock()
			l.etag = newETag
			l.mu.Unlock()
			lostAt = h.Expires.Add(-l.ttl / 4)
			failed = nil
		case conflict:
			l.lose(fmt.Errorf("lease %s was taken over by another run", l.store.url(l.key)))
			return
		default:
			failed = err // still ours until lostAt: tried again at the next tick
		}
	}
}

// lose records why the lease was lost and tells the run.
func (l *s3Lease) lose(err error) {
	l.mu.Lock()
	l.err = err
	l.mu.Unlock()
	close(l.lost)
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func (l *s3Lease) Release(ctx context.Context) error {
	select {
	case <-l.stop:
		return nil
	default:
	}
	close(l.stop)
	<-l.stopped
	select {
	case <-l.lost:
		return nil // not ours any more: nothing to release
	default:
	}
	h := l.holder
	h.Expires = time.Time{}
	body, _ := json.Marshal(h)
	l.mu.Lock()
	etag := l.etag
	l.mu.Unlock()
	_, conflict, err := l.store.putConditional(ctx, l.key, body, etag, newGeneration())
	if err != nil {
		return fmt.Errorf("releasing lease %s: %w", l.store.url(l.key), err)
	}
	if conflict {
		return fmt.Errorf("releasing lease %s: another run took it over", l.store.url(l.key))
	}
	return nil
}

// Probe proves that the sync's state can be written: it creates and deletes a file in
// each directory a run writes to (`backflow check`).
func (s *localStore) Probe(ctx context.Context, sync string) error {
	if err := checkName("sync name", sync); err != nil {
		return err
	}
	for _, dir := range []string{checkpointsDir, hashesDir, leasesDir, historyDir, filepath.Join(rejectsDir, sync)} {
		if err := ctx.Err(); err != nil {
			return err
		}
		dir = filepath.Join(s.dir, dir)
		// What the probe creates, it removes: `check` leaves no trace.
		defer removeEmptyDirs(dir, s.dir)
		if err := mkdirAll(dir); err != nil {
			return fmt.Errorf("state %s is not writable: %w", s.dir, err)
		}
		f, err := os.CreateTemp(dir, ".backflow-probe-*")
		if err != nil {
			return fmt.Errorf("state %s is not writable: %w", s.dir, err)
		}
		name := f.Name()
		_, werr := f.Write([]byte("probe\n"))
		if werr == nil {
			werr = f.Sync()
		}
		cerr := f.Close()
		rerr := os.Remove(name)
		if err := errors.Join(werr, cerr, rerr); err != nil {
			return fmt.Errorf("state %s is not writable: %w", s.dir, err)
		}
	}
	return nil
}

func (s *s3Store) Probe(ctx context.Context, sync string) error {
	if err := checkName("sync name", sync); err != nil {
		return err
	}
	key := s.key(checkpointsDir, ".backflow-probe-"+sync+"-"+newGeneration())
	if _, _, err := s.putConditional(ctx, key, []byte("probe\n"), "", newGeneration()); err != nil {
		return fmt.Errorf("state %s is not writable: %w", s, err)
	}
	_, err := s.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(s.bucket), Key: aws.String(key)})
	if err != nil {
		return fmt.Errorf("state %s: deleting the probe object: %w", s, s3conn.Describe(err, s.bucket, key))
	}
	return nil
}

// removeEmptyDirs removes dir and its parents up to and including root while they are
// empty (os.Remove never removes a directory that holds anything).
func removeEmptyDirs(dir, root string) {
	for {
		if os.Remove(dir) != nil || dir == root {
			return
		}
		parent := filepath.Dir(dir)
		if parent == dir || len(parent) < len(root) {
			return
		}
		dir = parent
	}
}

// sleepCtx waits d or until ctx is done.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
