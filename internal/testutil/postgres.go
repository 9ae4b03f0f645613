package testutil

import (
	"bytes"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// PostgreSQL test servers: one real server per test binary, started on a free loopback
// port with its data in a new temporary folder. The superuser (PostgresUser) logs in
// with a password over TCP (scram-sha-256), so tests can also create roles with their
// own passwords and privileges.

// The superuser of every server started here (it listens on 127.0.0.1 only).
const (
	PostgresUser     = "backflow"
	PostgresPassword = "backflowtest"
)

// Postgres is a running PostgreSQL server on a loopback port.
type Postgres struct {
	Host string // 127.0.0.1
	Port int

	cmd    *exec.Cmd
	exited chan struct{} // closed once the server process was waited for
	dir    string
	mu     sync.Mutex
	dbs    int
	logs   *bytes.Buffer
}

var (
	pgOnce   sync.Once
	pgServer *Postgres
	pgErr    error
)

// StartPostgres returns the test binary's PostgreSQL server, starting it on first use.
// It skips the test when no PostgreSQL binaries are found, unless
// BACKFLOW_REQUIRE_INTEGRATION=1. Call StopPostgres from TestMain after m.Run.
func StartPostgres(t testing.TB) *Postgres {
	t.Helper()
	pgOnce.Do(func() { pgServer, pgErr = LaunchPostgres() })
	if pgErr != nil {
		if os.Getenv(EnvRequireIntegration) == "1" {
			t.Fatalf("PostgreSQL is required (%s=1): %v", EnvRequireIntegration, pgErr)
		}
		t.Skipf("skipping integration test: %v", pgErr)
	}
	return pgServer
}

// StopPostgres stops the server started by StartPostgres, if any, and removes its data.
func StopPostgres() {
	if pgServer != nil {
		pgServer.Stop()
	}
}

// PostgresBin finds the folder of initdb and postgres: $BACKFLOW_PG_BIN, then the newest
// /usr/lib/postgresql/*/bin (Debian's layout), then PATH.
func PostgresBin() (string, error) {
	if p := os.Getenv("BACKFLOW_PG_BIN"); p != "" {
		if _, err := os.Stat(filepath.Join(p, "initdb")); err != nil {
			return "", fmt.Errorf("BACKFLOW_PG_BIN=%s holds no initdb: %w", p, err)
		}
		return p, nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	// Newest major version first: "9.6" < "15" must compare as numbers.
	sort.Slice(dirs, func(i, j int) bool { return pgMajor(dirs[i]) > pgMajor(dirs[j]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p), nil
	}
	return "", fmt.Errorf("no PostgreSQL binaries (apt-get install postgresql, or set BACKFLOW_PG_BIN to the folder of initdb and postgres)")
}

func pgMajor(binDir string) float64 {
	v, _ := strconv.ParseFloat(filepath.Base(filepath.Dir(binDir)), 64)
	return v
}

// LaunchPostgres starts a new server; Stop ends it. Tests use StartPostgres, which shares
// one per test binary.
//
// PostgreSQL refuses to run as root: when we are root, initdb and postgres run as nobody
// (setpriv), in a folder nobody owns, and setpriv keeps the parent-death signal across
// the change of user so that the server dies with the test binary even when it is killed.
func LaunchPostgres() (*Postgres, error) {
	bin, err := PostgresBin()
	if err != nil {
		return nil, err
	}
	root := os.Geteuid() == 0
	base := ""
	if fi, err := os.Stat("/tmp"); root && err == nil && fi.Mode().Perm()&0o001 != 0 {
		// nobody must reach the folder: TMPDIR may be under root's 0700 home, /tmp is not.
		base = "/tmp"
	}
	dir, err := os.MkdirTemp(base, "backflow-pg-")
	if err != nil {
		return nil, err
	}
	// nobody must reach the folder: MkdirTemp makes it 0700, and TMPDIR is usually 1777.
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	data, sock, pwfile := filepath.Join(dir, "data"), filepath.Join(dir, "sock"), filepath.Join(dir, "pwfile")
	for _, d := range []string{data, sock} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return nil, err
		}
	}
	if err := os.WriteFile(pwfile, []byte(PostgresPassword+"\n"), 0o600); err != nil {
		return nil, err
	}
	if root {
		for _, p := range []string{dir, data, sock, pwfile} {
			if err := os.Chown(p, 65534, 65534); err != nil {
				return nil, fmt.Errorf("giving %s to nobody: %w", p, err)
			}
		}
	}
	command := func(name string, args ...string) *exec.Cmd {
		path := filepath.Join(bin, name)
		if root {
			args = append([]string{"--reuid=nobody", "--regid=nogroup", "--clear-groups", "--pdeathsig=KILL", path}, args...)
			path = "setpriv"
		}
		cmd := exec.Command(path, args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "LC_ALL=C", "TZ=UTC")
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		return cmd
	}
	out, err := command("initdb", "-D", data, "-U", PostgresUser, "--pwfile="+pwfile,
		"--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync").CombinedOutput()
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("initdb: %v: %s", err, strings.TrimSpace(string(out)))
	}
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		logs := &bytes.Buffer{}
		cmd := command("postgres", "-D", data, "-c", "listen_addresses=127.0.0.1", "-c", "port="+strconv.Itoa(port),
			"-k", sock, "-c", "max_connections=200", "-c", "log_min_messages=fatal")
		cmd.Stdout, cmd.Stderr = logs, logs
		if err := cmd.Start(); err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("starting postgres: %w", err)
		}
		p := &Postgres{Host: "127.0.0.1", Port: port, cmd: cmd, dir: dir, logs: logs, exited: make(chan struct{})}
		go func() { _ = cmd.Wait(); close(p.exited) }()
		if err := waitReadyPG(bin, p, 60*time.Second); err != nil {
			_ = cmd.Process.Kill()
			<-p.exited
			lastErr = fmt.Errorf("postgres did not start: %v; output: %s", err, strings.TrimSpace(logs.String()))
			continue
		}
		return p, nil
	}
	os.RemoveAll(dir)
	return nil, lastErr
}

func (p *Postgres) addr() string { return net.JoinHostPort(p.Host, strconv.Itoa(p.Port)) }

// waitReadyPG waits until the server accepts connections (pg_isready: the postmaster
// listens before it has finished starting up, and refuses logins until then), or the
// process exited, or timeout passed.
func waitReadyPG(bin string, p *Postgres, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		out, err := exec.Command(filepath.Join(bin, "pg_isready"), "-h", p.Host, "-p", strconv.Itoa(p.Port), "-t", "2").CombinedOutput()
		if err == nil {
			return nil
		}
		select {
		case <-p.exited:
			return fmt.Errorf("the server exited")
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%v: %s", err, strings.TrimSpace(string(out)))
		}
	}
}

// Stop stops the server (a fast shutdown) and removes its data.
func (p *Postgres) Stop() {
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-p.exited:
	case <-time.After(20 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
	p.cmd = nil
	_ = os.RemoveAll(p.dir)
}

// URL returns a connection URL for user and password to database db.
func (p *Postgres) URL(user, password, db string) string {
	u := url.URL{Scheme: "postgres", User: url.UserPassword(user, password), Host: p.addr(), Path: "/" + db,
		RawQuery: "sslmode=disable"}
	return u.String()
}

// AdminURL is the superuser's URL to database db.
func (p *Postgres) AdminURL(db string) string { return p.URL(PostgresUser, PostgresPassword, db) }

// NewDatabase creates a new, empty database with a name unique in this test binary and
// returns its name.
func (p *Postgres) NewDatabase(t testing.TB) string {
	t.Helper()
	p.mu.Lock()
	p.dbs++
	name := fmt.Sprintf("t%d", p.dbs)
	p.mu.Unlock()
	p.Exec(t, "postgres", "CREATE DATABASE "+name)
	return name
}

// Exec runs SQL statements as the superuser in database db through psql (no client
// library needed here), failing the test on error.
func (p *Postgres) Exec(t testing.TB, db, sql string) {
	t.Helper()
	bin, err := PostgresBin()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(bin, "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", p.AdminURL(db), "-c", sql)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("psql %q: %v: %s", sql, err, out)
	}
}
