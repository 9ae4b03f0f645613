package schedule

import (
	"crypto/sha256"
	"crypto/subtle"
	"log/slog"
	"net/http"
	"strings"
	"time"
)

// Limits of serve's HTTP server. Every response it writes is small and quick (JSON
// documents, the metrics text, server-rendered pages; the status page updates by
// polling, not by a long-lived stream), so a connection that is slower than these is
// a client gone wrong or a slowloris, and is cut.
const (
	// ReadHeaderTimeout bounds reading a request's headers.
	ReadHeaderTimeout = 10 * time.Second
	// ReadTimeout bounds reading a whole request, body included.
	ReadTimeout = 30 * time.Second
	// WriteTimeout bounds handling a request and writing its response: a page of a
	// few hundred syncs or a scrape of /metrics takes milliseconds; a minute leaves
	// room for a slow store (the rejects of an s3:// state) and a slow link.
	WriteTimeout = 60 * time.Second
	// IdleTimeout is how long a kept-alive connection may wait for its next request.
	IdleTimeout = 120 * time.Second
	// MaxHeaderBytes bounds a request's headers.
	MaxHeaderBytes = 64 << 10
	// MaxBodyBytes bounds a request's body: the only bodies serve reads are the status
	// page's forms, a few bytes each.
	MaxBodyBytes = 16 << 10
)

// AuthRealm is the realm of the 401's WWW-Authenticate header: browsers show it in
// their login dialog.
const AuthRealm = "backflow"

// newHTTPServer is the http.Server that Run serves h with.
func newHTTPServer(h http.Handler, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: ReadHeaderTimeout,
		ReadTimeout:       ReadTimeout,
		WriteTimeout:      WriteTimeout,
		IdleTimeout:       IdleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}

// protect wraps the endpoints with what every request goes through: a bound on its
// body, refusal of cross-site requests that change something (the status page's
// buttons are plain forms, which any web page could otherwise submit with the
// browser's remembered credentials), and, when token is set, authentication.
// /healthz stays open: probes and load balancers carry no credentials, and it says
// nothing but "ok".
func protect(next http.Handler, token string, log *slog.Logger) http.Handler {
	cop := http.NewCrossOriginProtection()
	cop.SetDenyHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		log.Warn("cross-site request refused", "method", r.Method, "path", r.URL.Path,
			"origin", r.Header.Get("Origin"), "sec_fetch_site", r.Header.Get("Sec-Fetch-Site"))
		writeJSON(w, http.StatusForbidden, errorResponse{Error: "cross-site request refused: use the page's own buttons, or an API client"})
	}))
	guarded := cop.Handler(next)
	var want [sha256.Size]byte
	if token != "" {
		want = sha256.Sum256([]byte(token))
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, MaxBodyBytes)
		if r.URL.Path == "/healthz" {
			next.ServeHTTP(w, r)
			return
		}
		if token != "" && !authorized(r, want) {
			// Neither the header nor the token is logged: a wrong token is often a
			// right one for something else.
			log.Debug("unauthorized request", "method", r.Method, "path", r.URL.Path,
				"remote", r.RemoteAddr, "had_credentials", r.Header.Get("Authorization") != "")
			w.Header().Set("WWW-Authenticate", `Basic realm="`+AuthRealm+`"`)
			w.Header().Set("Cache-Control", "no-store")
			writeJSON(w, http.StatusUnauthorized, errorResponse{Error: "unauthorized: send Authorization: Bearer TOKEN (serve.auth_token)"})
			return
		}
		guarded.ServeHTTP(w, r)
	})
}

// authorized tells whether r carries the token, as a Bearer token or as the password
// of HTTP basic auth (any user name: browsers need one). Both sides are hashed before
// the constant-time comparison, so that neither the content nor the length of the
// token leaks through timing.
func authorized(r *http.Request, want [sha256.Size]byte) bool {
	h := r.Header.Get("Authorization")
	var got string
	const bearer = "Bearer "
	switch {
	case len(h) > len(bearer) && strings.EqualFold(h[:len(bearer)], bearer):
		got = strings.TrimSpace(h[len(bearer):])
	default:
		_, pw, ok := r.BasicAuth()
		if !ok {
			return false
		}
		got = pw
	}
	sum := sha256.Sum256([]byte(got))
	return subtle.ConstantTimeCompare(sum[:], want[:]) == 1
}
