package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Why a spawner: on Linux a child's ru_maxrss is not only its own. Go starts a process
// with clone(CLONE_VM|CLONE_VFORK): until exec the child runs in its parent's address
// space, and exec records that address space's high-water RSS in the child's maxrss. So a
// `backflow sync` started by the bench — which holds DuckDB, generated data and a million
// ready-made analytics-go messages — would report the bench's own peak memory. The
// bench therefore starts every measured process from a small helper process, a copy of
// itself started first, whose own peak (a few MiB) is the floor of every figure.

const spawnerArg = "-internal-spawner"

// spawnRequest is one process for the spawner to run.
type spawnRequest struct {
	Path string
	Args []string
	Env  []string
}

// spawnResult is how it went.
type spawnResult struct {
	Wall      time.Duration
	CPU       time.Duration
	MaxRSSKiB int64
	ExitCode  int
	Err       string
	Stderr    string
}

// spawner is the helper process, seen from the bench.
type spawner struct {
	cmd *exec.Cmd
	in  *json.Encoder
	out *json.Decoder
	mu  sync.Mutex
	// floorKiB is the helper's own peak RSS: every child's figure includes up to this.
	floorKiB int64
}

func startSpawner() (*spawner, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, spawnerArg)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the process spawner: %w", err)
	}
	s := &spawner{cmd: cmd, in: json.NewEncoder(stdin), out: json.NewDecoder(bufio.NewReader(stdout))}
	// The first answer is the helper's own peak RSS, before it has run anything.
	var hello spawnResult
	if err := s.out.Decode(&hello); err != nil {
		s.stop()
		return nil, fmt.Errorf("the process spawner did not start: %w", err)
	}
	s.floorKiB = hello.MaxRSSKiB
	return s, nil
}

// run runs one process to its end. On ctx's end the spawner (and with it the process,
// which dies with its parent) is killed, and the spawner is unusable afterwards.
func (s *spawner) run(ctx context.Context, req spawnRequest) (spawnResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.in.Encode(req); err != nil {
		return spawnResult{}, fmt.Errorf("process spawner: %w", err)
	}
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-ctx.Done():
			_ = s.cmd.Process.Kill()
		case <-done:
		}
	}()
	var res spawnResult
	if err := s.out.Decode(&res); err != nil {
		if ctx.Err() != nil {
			return res, ctx.Err()
		}
		return res, fmt.Errorf("process spawner: %w", err)
	}
	return res, nil
}

func (s *spawner) stop() {
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
}

// spawnerMain is the helper: it reads requests on stdin, one JSON object each, runs
// them one at a time and writes each result on stdout.
func spawnerMain() int {
	in := json.NewDecoder(bufio.NewReader(os.Stdin))
	out := json.NewEncoder(os.Stdout)
	_ = out.Encode(spawnResult{MaxRSSKiB: selfPeakKiB()})
	for {
		var req spawnRequest
		if err := in.Decode(&req); err != nil {
			if errors.Is(err, io.EOF) {
				return 0
			}
			fmt.Fprintln(os.Stderr, "bench spawner:", err)
			return 1
		}
		if err := out.Encode(spawn(req)); err != nil {
			return 1
		}
	}
}

func spawn(req spawnRequest) spawnResult {
	cmd := exec.Command(req.Path, req.Args...)
	cmd.Env = req.Env
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	start := time.Now()
	err := cmd.Run()
	res := spawnResult{Wall: time.Since(start), Stderr: stderr.String()}
	if cmd.ProcessState != nil {
		res.CPU = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
		res.ExitCode = cmd.ProcessState.ExitCode()
		if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
			res.MaxRSSKiB = ru.Maxrss // KiB on Linux
		}
	}
	if err != nil {
		res.Err = err.Error()
	}
	return res
}

// selfPeakKiB is this process's peak RSS (VmHWM), in KiB.
func selfPeakKiB() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		var ru syscall.Rusage
		if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
			return ru.Maxrss
		}
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			var n int64
			fmt.Sscan(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), &n)
			return n
		}
	}
	return 0
}
