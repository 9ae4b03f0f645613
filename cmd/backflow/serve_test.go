package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestRequireLoopback pins which --listen addresses serve accepts without a token.
func TestRequireLoopback(t *testing.T) {
	ctx := context.Background()
	for _, addr := range []string{"127.0.0.1:8080", "127.0.0.2:8080", "[::1]:8080", "localhost:8080", "[::ffff:127.0.0.1]:8080"} {
		if err := requireLoopback(ctx, addr); err != nil {
			t.Errorf("%s: %v, want accepted", addr, err)
		}
	}
	for _, addr := range []string{":8080", "0.0.0.0:8080", "[::]:8080", "10.1.2.3:8080", "192.168.0.1:80", "[2001:db8::1]:8080"} {
		err := requireLoopback(ctx, addr)
		if err == nil || !strings.Contains(err.Error(), "--insecure-listen") || !strings.Contains(err.Error(), "--listen "+addr+" ") {
			t.Errorf("%s: %v, want refused with the way out", addr, err)
		}
	}
	if err := requireLoopback(ctx, "8080"); err == nil {
		t.Error("an address without a port was accepted")
	}
}

// TestAuthTokenFile checks where serve's token comes from, and that a bad one is
// refused without being quoted.
func TestAuthTokenFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	if tok, err := authToken("from-config-0123456789", ""); err != nil || tok != "from-config-0123456789" {
		t.Errorf("no file: %q %v", tok, err)
	}
	if tok, err := authToken("from-config-0123456789", write("ok", "from-file-0123456789\r\n")); err != nil || tok != "from-file-0123456789" {
		t.Errorf("a file with a line break: %q %v", tok, err)
	}
	for name, content := range map[string]string{"short": "hunter2\n", "empty": "", "two": "hunter2-hunter2-hunter2\nsecond-line-0123456789\n"} {
		_, err := authToken("", write(name, content))
		if err == nil || strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%s: %v, want an error that does not quote the token", name, err)
		}
	}
	if _, err := authToken("", filepath.Join(dir, "missing")); err == nil || !strings.Contains(err.Error(), "--auth-token-file") {
		t.Errorf("missing file: %v", err)
	}
}
