package logging

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func TestSecretsAreScrubbed(t *testing.T) {
	for _, format := range []string{"text", "json"} {
		var buf bytes.Buffer
		log, err := New(&buf, format, "info", []string{"sk-very-secret"})
		if err != nil {
			t.Fatal(err)
		}
		log.With("key", "sk-very-secret").Info("using sk-very-secret", "err", errors.New("bad key sk-very-secret"), "n", 3)
		out := buf.String()
		if strings.Contains(out, "sk-very-secret") {
			t.Fatalf("%s log leaks the secret: %s", format, out)
		}
		if !strings.Contains(out, "REDACTED") {
			t.Fatalf("%s log has no REDACTED marker: %s", format, out)
		}
	}
}

func TestBadFormatAndLevel(t *testing.T) {
	if _, err := New(&bytes.Buffer{}, "xml", "info", nil); err == nil {
		t.Fatal("want an error for format xml")
	}
	if _, err := New(&bytes.Buffer{}, "text", "loud", nil); err == nil {
		t.Fatal("want an error for level loud")
	}
}
