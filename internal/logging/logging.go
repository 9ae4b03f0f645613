// Package logging builds backflow's slog loggers: text or JSON on stderr, with every
// secret of the configuration scrubbed from messages and attributes.
package logging

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
)

// New returns a logger writing to w in format "text" or "json" at level, replacing every
// string of secrets found in a message or an attribute with REDACTED.
func New(w io.Writer, format, level string, secrets []string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv, ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
		if a.Value.Kind() == slog.KindString {
			a.Value = slog.StringValue(Scrub(a.Value.String(), secrets))
		} else if a.Value.Kind() == slog.KindAny {
			if err, ok := a.Value.Any().(error); ok {
				a.Value = slog.StringValue(Scrub(err.Error(), secrets))
			}
		}
		return a
	}}
	var h slog.Handler
	switch format {
	case "text", "":
		h = slog.NewTextHandler(w, opts)
	case "json":
		h = slog.NewJSONHandler(w, opts)
	default:
		return nil, fmt.Errorf("--log-format %q: want text or json", format)
	}
	return slog.New(&scrubHandler{Handler: h, secrets: secrets}), nil
}

// Scrub replaces every secret in s with REDACTED.
func Scrub(s string, secrets []string) string {
	for _, sec := range secrets {
		if len(sec) >= 4 && strings.Contains(s, sec) {
			s = strings.ReplaceAll(s, sec, "REDACTED")
		}
	}
	return s
}

// scrubHandler scrubs the record's message; attributes are scrubbed by ReplaceAttr.
type scrubHandler struct {
	slog.Handler
	secrets []string
}

func (h *scrubHandler) Handle(ctx context.Context, r slog.Record) error {
	if len(h.secrets) > 0 {
		nr := slog.NewRecord(r.Time, r.Level, Scrub(r.Message, h.secrets), r.PC)
		r.Attrs(func(a slog.Attr) bool { nr.AddAttrs(a); return true })
		r = nr
	}
	return h.Handler.Handle(ctx, r)
}

func (h *scrubHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &scrubHandler{Handler: h.Handler.WithAttrs(attrs), secrets: h.secrets}
}

func (h *scrubHandler) WithGroup(name string) slog.Handler {
	return &scrubHandler{Handler: h.Handler.WithGroup(name), secrets: h.secrets}
}
