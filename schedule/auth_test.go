package schedule

import (
	"context"
	"encoding/base64"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/pipeline"
)

const testToken = "s3cr3t-t0ken-0123456789abcdef"

// req makes one request with the given headers (name, value, ...).
func req(t *testing.T, method, u string, headers ...string) response {
	t.Helper()
	return reqBody(t, method, u, "", headers...)
}

func reqBody(t *testing.T, method, u, body string, headers ...string) response {
	t.Helper()
	r, err := http.NewRequest(method, u, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		r.Header.Set(headers[i], headers[i+1])
	}
	// Redirects are answers in their own right here (the page's forms answer 303).
	client := &http.Client{Timeout: wait, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	res, err := client.Do(r)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{code: res.StatusCode, header: res.Header, body: b}
}

func basic(user, pw string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pw))
}

// countingRun is a RunFunc that counts its runs and returns at once.
func countingRun(n *atomic.Int64) RunFunc {
	return func(ctx context.Context, sync string, _ bool) (*pipeline.Report, error) {
		n.Add(1)
		return okReport(ctx, sync), nil
	}
}

// TestAuth checks every way a request can present the token, and that /healthz alone
// needs none.
func TestAuth(t *testing.T) {
	t.Parallel()
	logs := newLogRecorder()
	var runs atomic.Int64
	store := newMemStore()
	ts := startServer(t, Options{
		Syncs:     []config.Sync{{Name: "users"}},
		Run:       countingRun(&runs),
		Store:     store,
		AuthToken: testToken,
		Logger:    logs.logger(),
	})
	tests := []struct {
		name, method, path string
		auth               string // the Authorization header; "" for none
		want               int
	}{
		{"healthz needs nothing", "GET", "/healthz", "", 200},
		{"healthz ignores a wrong token", "GET", "/healthz", "Bearer nope", 200},
		{"syncs without token", "GET", "/syncs", "", 401},
		{"metrics without token", "GET", "/metrics", "", 401},
		{"page without token", "GET", "/", "", 401},
		{"sync page without token", "GET", "/ui/syncs/users", "", 401},
		{"live without token", "GET", "/ui/live", "", 401},
		{"unknown path without token", "GET", "/nope", "", 401},
		{"run without token", "POST", "/syncs/users/run", "", 401},
		{"form without token", "POST", "/ui/syncs/users/run", "", 401},
		{"wrong bearer", "GET", "/syncs", "Bearer " + testToken + "x", 401},
		{"prefix of the token", "GET", "/syncs", "Bearer " + testToken[:10], 401},
		{"empty bearer", "GET", "/syncs", "Bearer ", 401},
		{"token without scheme", "GET", "/syncs", testToken, 401},
		{"other scheme", "GET", "/syncs", "Token " + testToken, 401},
		{"basic, wrong password", "GET", "/syncs", basic("admin", "nope"), 401},
		{"basic, token as user name", "GET", "/syncs", basic(testToken, ""), 401},
		{"wrong bearer run", "POST", "/syncs/users/run", "Bearer nope-nope-nope-nope", 401},
		{"bearer", "GET", "/syncs", "Bearer " + testToken, 200},
		{"bearer, scheme in lower case", "GET", "/syncs", "bearer " + testToken, 200},
		{"bearer metrics", "GET", "/metrics", "Bearer " + testToken, 200},
		{"basic, any user", "GET", "/", basic("admin", testToken), 200},
		{"basic, no user", "GET", "/ui/syncs/users", basic("", testToken), 200},
		{"basic live", "GET", "/ui/live", basic("me", testToken), 200},
		{"bearer unknown path", "GET", "/nope", "Bearer " + testToken, 404},
	}
	for _, tc := range tests {
		var h []string
		if tc.auth != "" {
			h = []string{"Authorization", tc.auth}
		}
		r := req(t, tc.method, ts.url+tc.path, h...)
		if r.code != tc.want {
			t.Errorf("%s: %s %s: %d %s, want %d", tc.name, tc.method, tc.path, r.code, r.body, tc.want)
		}
		if r.code == http.StatusUnauthorized {
			if got := r.header.Get("WWW-Authenticate"); got != `Basic realm="backflow"` {
				t.Errorf("%s: WWW-Authenticate %q", tc.name, got)
			}
			if strings.Contains(string(r.body), testToken) {
				t.Errorf("%s: the 401 shows the token", tc.name)
			}
		}
	}
	if n := runs.Load(); n != 0 {
		t.Fatalf("%d runs started by unauthenticated requests", n)
	}
	r := req(t, "POST", ts.url+"/syncs/users/run", "Authorization", "Bearer "+testToken)
	if r.code != http.StatusAccepted {
		t.Fatalf("POST with the token: %d %s", r.code, r.body)
	}
	store.waitAppended(t, 1)
	logs.waitFor(t, "about an unauthorized request", msgIs("unauthorized request"))
	if err := ts.stop(t); err != nil {
		t.Fatal(err)
	}
	if _, raw := logs.all(); strings.Contains(raw, testToken) || strings.Contains(raw, testToken[:10]) {
		t.Fatalf("the logs show the token:\n%s", raw)
	}
}

// TestNoTokenNoAuth checks that a server without a token answers without credentials
// (the loopback default), and ignores credentials sent anyway.
func TestNoTokenNoAuth(t *testing.T) {
	t.Parallel()
	var runs atomic.Int64
	ts := startServer(t, Options{Syncs: []config.Sync{{Name: "users"}}, Run: countingRun(&runs)})
	for _, h := range [][]string{nil, {"Authorization", "Bearer whatever"}} {
		if r := req(t, "GET", ts.url+"/syncs", h...); r.code != http.StatusOK {
			t.Errorf("GET /syncs %v: %d %s", h, r.code, r.body)
		}
	}
}

// TestCrossSiteRefused checks that a request a browser marks as coming from another
// site cannot start a run, by the page's form or by the API, even with the token (a
// browser sends remembered basic credentials along).
func TestCrossSiteRefused(t *testing.T) {
	t.Parallel()
	var runs atomic.Int64
	store := newMemStore()
	ts := startServer(t, Options{Syncs: []config.Sync{{Name: "users"}}, Run: countingRun(&runs), Store: store, AuthToken: testToken})
	auth := []string{"Authorization", basic("me", testToken), "Content-Type", "application/x-www-form-urlencoded"}
	u, _ := url.Parse(ts.url)
	refused := []struct {
		name    string
		path    string
		headers []string
	}{
		{"form, cross-site", "/ui/syncs/users/run", []string{"Sec-Fetch-Site", "cross-site"}},
		{"form, same-site other origin", "/ui/syncs/users/run", []string{"Sec-Fetch-Site", "same-site"}},
		{"form, foreign Origin", "/ui/syncs/users/run", []string{"Origin", "https://evil.example"}},
		{"api, cross-site", "/syncs/users/run", []string{"Sec-Fetch-Site", "cross-site"}},
	}
	for _, tc := range refused {
		r := reqBody(t, "POST", ts.url+tc.path, "full=1", append(append([]string{}, auth...), tc.headers...)...)
		if r.code != http.StatusForbidden {
			t.Errorf("%s: %d %s, want 403", tc.name, r.code, r.body)
		}
	}
	if n := runs.Load(); n != 0 {
		t.Fatalf("%d runs started by cross-site requests", n)
	}
	// The page's own form (same origin), and an API client (no browser headers).
	r := reqBody(t, "POST", ts.url+"/ui/syncs/users/run", "back=index", append(auth, "Sec-Fetch-Site", "same-origin", "Origin", "http://"+u.Host)...)
	if r.code != http.StatusSeeOther || !strings.HasPrefix(r.header.Get("Location"), "/?") {
		t.Fatalf("same-origin form: %d %v %s, want 303 to /", r.code, r.header, r.body)
	}
	store.waitAppended(t, 1)
	if r := req(t, "POST", ts.url+"/syncs/users/run", "Authorization", "Bearer "+testToken); r.code != http.StatusAccepted {
		t.Fatalf("API client: %d %s", r.code, r.body)
	}
	store.waitAppended(t, 1)
	if n := runs.Load(); n != 2 {
		t.Fatalf("%d runs, want 2", n)
	}
}

// TestBodyLimit checks that a request body larger than MaxBodyBytes is refused.
func TestBodyLimit(t *testing.T) {
	t.Parallel()
	var runs atomic.Int64
	ts := startServer(t, Options{Syncs: []config.Sync{{Name: "users"}}, Run: countingRun(&runs)})
	big := "back=" + strings.Repeat("x", MaxBodyBytes)
	r := reqBody(t, "POST", ts.url+"/ui/syncs/users/run", big, "Content-Type", "application/x-www-form-urlencoded")
	if r.code != http.StatusRequestEntityTooLarge {
		t.Fatalf("POST of %d bytes: %d %s, want 413", len(big), r.code, r.body)
	}
	if n := runs.Load(); n != 0 {
		t.Fatalf("a run started from a refused form")
	}
}

// TestServerTimeouts checks that every timeout of the HTTP server is set: without
// them one slow client holds a connection (and a goroutine) for ever.
func TestServerTimeouts(t *testing.T) {
	hs := newHTTPServer(http.NotFoundHandler(), newLogRecorder().logger())
	for name, d := range map[string]time.Duration{
		"ReadHeaderTimeout": hs.ReadHeaderTimeout, "ReadTimeout": hs.ReadTimeout,
		"WriteTimeout": hs.WriteTimeout, "IdleTimeout": hs.IdleTimeout,
	} {
		if d <= 0 || d > 2*time.Minute {
			t.Errorf("%s %v, want set and at most 2m", name, d)
		}
	}
	if hs.ReadHeaderTimeout > hs.ReadTimeout {
		t.Errorf("ReadHeaderTimeout %v exceeds ReadTimeout %v", hs.ReadHeaderTimeout, hs.ReadTimeout)
	}
	if hs.MaxHeaderBytes <= 0 || hs.MaxHeaderBytes > 1<<20 {
		t.Errorf("MaxHeaderBytes %d", hs.MaxHeaderBytes)
	}
}
