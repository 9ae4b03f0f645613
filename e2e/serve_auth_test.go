package e2e

// `backflow serve` with and without an auth token: the real binary, its flags, its exit
// code and its logs.

import (
	"net"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/backflowhq/backflow/internal/exampledata"
)

const e2eToken = "e2e-token-7f3a9c2b5d8e1f4a6b0c"

// TestServeRefusesPublicListenWithoutToken: without a token, an address other machines
// can reach is a usage error (exit 2, one line saying what to do) before anything is
// served; --insecure-listen overrides it, and a loopback address needs nothing.
func TestServeRefusesPublicListenWithoutToken(t *testing.T) {
	t.Parallel()
	w := newWorkspace(t)
	w.addUsers(exampledata.Options{Files: 1, RowsPerFile: 10, Seed: 91})
	w.writeConfigText(serveYAML(t, usersConfig(fileDest("out/users.jsonl")), nil, nil))
	port := freeLoopbackAddr(t)[len("127.0.0.1:"):]
	for _, addr := range []string{"0.0.0.0:" + port, ":" + port, "[::]:" + port} {
		r := runIn(t, w.dir, w.env, "serve", "-c", w.configPath(), "--listen", addr)
		lines := r.errorLines()
		if r.Code != 2 || len(lines) != 1 || !strings.Contains(lines[0], "--listen "+addr) ||
			!strings.Contains(lines[0], "serve.auth_token") || !strings.Contains(lines[0], "--insecure-listen") {
			t.Errorf("serve --listen %s without a token: want exit 2 and one line naming the address and the ways out:\n%s", addr, r)
		}
		if strings.Contains(r.Stderr, "serving") {
			t.Errorf("serve --listen %s served before refusing:\n%s", addr, r)
		}
	}
	// Overridden: it serves on every interface (reached here through loopback).
	s := w.startServeAt(t, "0.0.0.0:"+port, "--insecure-listen")
	s.url = "http://127.0.0.1:" + port
	if !s.waitReady() {
		t.Fatalf("serve --insecure-listen did not start:\n%s", s.output())
	}
	if code, b := s.do(http.MethodGet, "/syncs"); code != http.StatusOK {
		t.Errorf("GET /syncs without a token: %d %s", code, b)
	}
	s.stop(serveWait)
	if !strings.Contains(s.stderr(), "no authentication") {
		t.Errorf("serve without a token does not warn that the endpoints are open:\n%s", s.stderr())
	}
}

// TestServeAuthToken: with serve.auth_token from ${BACKFLOW_TOKEN} or with
// --auth-token-file, every endpoint but /healthz wants the token; serve may then listen
// on any address; the token never shows in the logs, even at debug level.
func TestServeAuthToken(t *testing.T) {
	t.Parallel()
	for _, how := range []string{"config", "file"} {
		t.Run(how, func(t *testing.T) {
			w := newWorkspace(t)
			w.addUsers(exampledata.Options{Files: 1, RowsPerFile: 50, Seed: 92})
			var serve map[string]any
			var extra []string
			if how == "config" {
				serve = map[string]any{"auth_token": "${BACKFLOW_TOKEN}"}
				w.env = append(w.env, "BACKFLOW_TOKEN="+e2eToken)
			} else {
				if err := os.WriteFile(w.path("token"), []byte(e2eToken+"\n"), 0o600); err != nil {
					t.Fatal(err)
				}
				extra = []string{"--auth-token-file", w.path("token")}
			}
			w.writeConfigText(serveYAML(t, usersConfig(fileDest("out/users.jsonl")), serve, nil))
			// Every interface: allowed with a token. Reached through loopback.
			port := freeLoopbackAddr(t)[len("127.0.0.1:"):]
			s := w.startServeAt(t, net.JoinHostPort("0.0.0.0", port), append(extra, "--log-level", "debug")...)
			s.url = "http://127.0.0.1:" + port
			if !s.waitReady() {
				t.Fatalf("serve did not start:\n%s", s.output())
			}
			for _, path := range []string{"/syncs", "/metrics", "/", "/ui/syncs/users"} {
				if code, _ := s.do(http.MethodGet, path); code != http.StatusUnauthorized {
					t.Errorf("GET %s without the token: %d, want 401", path, code)
				}
			}
			s.authz = "Bearer wrong-token-0123456789"
			if code, _ := s.do(http.MethodPost, "/syncs/users/run"); code != http.StatusUnauthorized {
				t.Errorf("POST with a wrong token: %d, want 401", code)
			}
			s.authz = "Bearer " + e2eToken
			id := s.trigger("users")
			if rep := s.waitRun("users", id); rep.Status != "ok" {
				t.Errorf("run started with the token: %s", rep)
			}
			for _, path := range []string{"/metrics", "/", "/ui/syncs/users"} {
				if code, b := s.do(http.MethodGet, path); code != http.StatusOK {
					t.Errorf("GET %s with the token: %d %.200s", path, code, b)
				}
			}
			s.stop(serveWait)
			if out := s.output(); strings.Contains(out, e2eToken) {
				t.Errorf("the token shows in the output:\n%s", out)
			}
			if !strings.Contains(s.stderr(), "unauthorized request") {
				t.Errorf("no debug line about the refused requests:\n%s", s.stderr())
			}
		})
	}
}

// TestServeBadTokenFile: a token file that cannot be read, or holds a token too short
// to be safe, is a usage error that never quotes the token.
func TestServeBadTokenFile(t *testing.T) {
	t.Parallel()
	w := newWorkspace(t)
	w.addUsers(exampledata.Options{Files: 1, RowsPerFile: 10, Seed: 93})
	w.writeConfigText(serveYAML(t, usersConfig(fileDest("out/users.jsonl")), nil, nil))
	if err := os.WriteFile(w.path("short"), []byte("hunter2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for file, want := range map[string]string{w.path("missing"): "--auth-token-file", w.path("short"): "at least 16 characters"} {
		r := runIn(t, w.dir, w.env, "serve", "-c", w.configPath(), "--listen", freeLoopbackAddr(t), "--auth-token-file", file)
		if r.Code != 2 || len(r.errorLines()) != 1 || !strings.Contains(r.Stderr, want) || strings.Contains(r.Stderr, "hunter2") {
			t.Errorf("--auth-token-file %s: want exit 2 and one line saying %q, never the token:\n%s", file, want, r)
		}
	}
}
