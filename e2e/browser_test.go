package e2e

// The status page of `backflow serve` in a real browser: headless Chromium driven over
// the DevTools protocol, against the real binary with a token, a webhook slow enough to
// watch a run in progress, and one that refuses some rows.

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/emulation"
	cdplog "github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/backflowhq/backflow/internal/exampledata"
)

// browserWait bounds one step in the browser (a page load, a wait for the page to
// show something).
const browserWait = 30 * time.Second

// chromiumPath finds the browser: BACKFLOW_CHROMIUM, else the usual names on PATH.
func chromiumPath() string {
	if p := os.Getenv("BACKFLOW_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "headless-shell"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

// newBrowser starts a headless Chromium with a fresh profile and returns the context
// of its first tab. Without Chromium the test is skipped, unless
// BACKFLOW_REQUIRE_BROWSER=1 (CI), where it fails.
func newBrowser(t *testing.T) context.Context {
	t.Helper()
	path := chromiumPath()
	if path == "" {
		const how = "browser tests need Chromium: apt-get install chromium (or set BACKFLOW_CHROMIUM to its path)"
		if os.Getenv("BACKFLOW_REQUIRE_BROWSER") == "1" {
			t.Fatal(how + "; BACKFLOW_REQUIRE_BROWSER=1 forbids skipping")
		}
		t.Skip(how)
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(path),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1024, 640),
	)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	// The first Do starts the browser: with ctx itself, as the browser lives as long
	// as the context of its first action.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("starting %s: %v", path, err)
	}
	return ctx
}

// newTab opens another tab of the same browser (with its own headers and settings).
func newTab(t *testing.T, browser context.Context) context.Context {
	t.Helper()
	ctx, cancel := chromedp.NewContext(browser)
	t.Cleanup(cancel)
	if err := chromedp.Do(ctx); err != nil { // the tab lives as long as this context
		t.Fatalf("opening a tab: %v", err)
	}
	return ctx
}

// do runs the steps within browserWait.
func do(t *testing.T, ctx context.Context, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	tctx, cancel := context.WithTimeout(ctx, browserWait)
	defer cancel()
	if err := chromedp.Do(tctx, steps...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// run runs one action that returns a value, within browserWait.
func run[T any](t *testing.T, ctx context.Context, what string, a chromedp.Action[T]) T {
	t.Helper()
	tctx, cancel := context.WithTimeout(ctx, browserWait)
	defer cancel()
	v, err := chromedp.Run(tctx, a)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return v
}

// waitFor waits until the JavaScript expression is true in the page (the page's own
// script updates it: nothing here reloads).
func waitFor(t *testing.T, ctx context.Context, what, expr string) {
	t.Helper()
	tctx, cancel := context.WithTimeout(ctx, browserWait)
	defer cancel()
	if _, err := chromedp.Run(tctx, chromedp.Poll[chromedp.Void](expr, chromedp.WithPollingInterval(50*time.Millisecond))); err != nil {
		body, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body ? document.body.innerText : ""`))
		t.Fatalf("waiting for %s (%s): %v\npage text:\n%s", what, expr, err, body)
	}
}

// pageText is the visible text of the page.
func pageText(t *testing.T, ctx context.Context) string {
	t.Helper()
	return run(t, ctx, "reading the page", chromedp.Evaluate[string](`document.body.innerText`))
}

// setAuth makes every request of the tab carry HTTP basic credentials with the token as
// password, as a browser does once its login dialog was answered.
func setAuth(t *testing.T, ctx context.Context, token string) {
	t.Helper()
	basic := "Basic " + base64.StdEncoding.EncodeToString([]byte("admin:"+token))
	do(t, ctx, "setting the credentials", chromedp.Func(func(ctx context.Context, _ *chromedp.Target) error {
		if _, err := chromedp.Call(ctx, network.Enable, network.EnableParams{}); err != nil {
			return err
		}
		_, err := chromedp.Call(ctx, network.SetExtraHTTPHeaders, network.SetExtraHTTPHeadersParams{Headers: network.Headers{"Authorization": basic}})
		return err
	}))
}

// screenshot saves a PNG of the viewport into docs/ when BACKFLOW_UPDATE_SCREENSHOTS=1
// (the README shows them), else into the test's temporary directory.
func screenshot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	png := run(t, ctx, "taking a screenshot", chromedp.CaptureScreenshot())
	dir := t.TempDir()
	if os.Getenv("BACKFLOW_UPDATE_SCREENSHOTS") == "1" {
		dir = filepath.Join("..", "docs")
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot %s: %d bytes", path, len(png))
}

// consoleErrors collects the errors the page reports (exceptions, refused inline
// scripts or styles, failed loads) until the tab ends.
type consoleErrors struct {
	mu   sync.Mutex
	msgs []string
}

func watchConsole(t *testing.T, ctx context.Context) *consoleErrors {
	t.Helper()
	c := &consoleErrors{}
	if _, err := chromedp.Call(ctx, cdplog.Enable, cdp.Empty{}); err != nil {
		t.Fatalf("enabling the log: %v", err)
	}
	msgs := chromedp.Console(ctx)
	go func() {
		for m, err := range msgs {
			if err != nil {
				return
			}
			if s := m.String(); m.IsException() || m.Type == "error" || strings.Contains(s, "Content Security Policy") {
				c.mu.Lock()
				c.msgs = append(c.msgs, s)
				c.mu.Unlock()
			}
		}
	}()
	return c
}

func (c *consoleErrors) take() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.msgs
	c.msgs = nil
	return out
}

// ---- webhook receivers ----

// gateHook answers the first free POSTs at once, then holds every POST until released:
// a run stays in progress, with some rows sent, for as long as the test needs.
type gateHook struct {
	url  string
	free int

	mu       sync.Mutex
	posts    int
	released chan struct{}
	once     sync.Once
}

func newGateHook(t *testing.T, free int) *gateHook {
	h := &gateHook{free: free, released: make(chan struct{})}
	srv := httptest.NewServer(h)
	h.url = srv.URL + "/hook"
	t.Cleanup(srv.Close)
	t.Cleanup(h.release) // runs first: Close waits for held handlers
	return h
}

func (h *gateHook) release() { h.once.Do(func() { close(h.released) }) }

func (h *gateHook) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.mu.Lock()
	h.posts++
	held := h.posts > h.free
	h.mu.Unlock()
	if held {
		select {
		case <-h.released:
		case <-r.Context().Done():
			return
		}
	}
	w.WriteHeader(http.StatusOK)
}

// refusingHook answers 400 to a batch holding a row whose userId refuse says is bad;
// the destination splits the batch until that row is alone, and rejects it.
func newRefusingHook(t *testing.T, refuse func(id int) bool) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Batch []message `json:"batch"`
		}
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		for _, m := range body.Batch {
			if id, err := strconv.Atoi(m.UserID); err == nil && refuse(id) {
				http.Error(w, fmt.Sprintf(`{"error":"userId %d is on the blocklist"}`, id), http.StatusBadRequest)
				return
			}
		}
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(srv.Close)
	return srv.URL + "/crm"
}

// TestStatusPageInBrowser: a person's path through the page, in Chromium. Without the
// token the page is refused; with it, the syncs show; Run now starts a run whose counts
// move while it runs and which ends as ok; a sync's page runs it and lists its first
// rejected rows; the page works with JavaScript off; and another site cannot make the
// browser press the buttons.
func TestStatusPageInBrowser(t *testing.T) {
	t.Parallel()
	browser := newBrowser(t)

	gate := newGateHook(t, 5)
	crm := newRefusingHook(t, func(id int) bool { return id%40 == 7 })
	w := newWorkspace(t)
	w.addUsers(exampledata.Options{Files: 2, RowsPerFile: 1000, Seed: 71})
	slow := webhookDest(gate.url)
	slow["name"], slow["max_in_flight"], slow["timeout"] = "warehouse-hook", 1, "60s"
	refusing := webhookDest(crm)
	refusing["name"] = "crm"
	c := usersConfig(slow)
	accounts := c.Syncs[0]
	accounts.Name, accounts.Destinations = "accounts", []map[string]any{refusing}
	c.Syncs = append(c.Syncs, accounts)
	w.writeConfigText(serveYAML(t, c, nil, map[string]map[string]any{"users": {"every": "1h"}}))
	const token = "browser-token-5e8d2a7c9b1f4e6a"
	if err := os.WriteFile(w.path("token"), []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := w.startServe(t, "--auth-token-file", w.path("token"))
	s.authz = "Bearer " + token

	// Without the token: refused with 401. A headless browser has no login dialog to
	// show, so it gives up on the page (net::ERR_INVALID_AUTH_CREDENTIALS): the answer is
	// seen on the network.
	anon := newTab(t, browser)
	var mu sync.Mutex
	var statuses []int64
	if err := chromedp.Listen(anon, func(ev any) {
		if ev, ok := ev.(*network.EventResponseReceived); ok && strings.HasPrefix(ev.Response.URL, s.url) {
			mu.Lock()
			statuses = append(statuses, ev.Response.Status)
			mu.Unlock()
		}
	}); err != nil {
		t.Fatal(err)
	}
	do(t, anon, "watching the network", chromedp.Func(func(ctx context.Context, _ *chromedp.Target) error {
		_, err := chromedp.Call(ctx, network.Enable, network.EnableParams{})
		return err
	}))
	loadErr := chromedp.Do(anon, chromedp.Navigate(s.url+"/"))
	mu.Lock()
	got := slices.Clone(statuses)
	mu.Unlock()
	if len(got) == 0 || got[len(got)-1] != http.StatusUnauthorized {
		t.Fatalf("the page without the token: responses %v (load error %v), want 401", got, loadErr)
	}
	if txt, _ := chromedp.Run(anon, chromedp.Evaluate[string](`document.body ? document.body.innerText : ""`)); strings.Contains(txt, "accounts") {
		t.Fatalf("the page without the token shows the syncs:\n%s", txt)
	}

	tab := newTab(t, browser)
	console := watchConsole(t, tab)
	setAuth(t, tab, token)
	res := run(t, tab, "loading the page", chromedp.NavigateResponse(s.url+"/"))
	if res.Status != http.StatusOK {
		t.Fatalf("GET / with the token: %d", res.Status)
	}
	txt := pageText(t, tab)
	for _, want := range []string{"users", "accounts", "every 1h", "manual", "No runs yet."} {
		if !strings.Contains(txt, want) {
			t.Errorf("the page does not show %q:\n%s", want, txt)
		}
	}

	// Run now: the form posts, the page comes back saying so, and its script follows
	// the run: 5 batches of 100 rows are acknowledged, then the webhook holds.
	if _, err := chromedp.RunResponse(tab, chromedp.Click(chromedp.CSS(`#sync-users button`))); err != nil {
		t.Fatalf("pressing Run now: %v", err)
	}
	if txt := pageText(t, tab); !strings.Contains(txt, "A run of users started") {
		t.Errorf("after Run now the page does not say the run started:\n%s", txt)
	}
	waitFor(t, tab, "the live view to show 500 rows sent",
		`(document.querySelector('#live-users [data-k="rows_sent"]') || {}).textContent === "500"`)
	waitFor(t, tab, "the batch in flight", `(document.querySelector('#live-users [data-k="d.warehouse-hook.inflight"]') || {}).textContent === "1"`)
	if txt := pageText(t, tab); !strings.Contains(txt, "Rows read") || !strings.Contains(txt, "rows/s") || !strings.Contains(txt, "warehouse-hook") {
		t.Errorf("the run in progress lacks its counts, rate or destination:\n%s", txt)
	}
	screenshot(t, tab, "status-page.png")

	// Released: the page notices the end of the run by itself.
	gate.release()
	waitFor(t, tab, "the run to finish as ok", `!document.getElementById("live-users") && !!document.querySelector('#sync-users .badge.ok')`)
	if txt := pageText(t, tab); !strings.Contains(txt, "2,000 read · 2,000 sent") {
		t.Errorf("the finished run's counts are not shown:\n%s", txt)
	}

	// A sync's page: Run now there, and its rejected rows once the run ended.
	if _, err := chromedp.RunResponse(tab, chromedp.Click(chromedp.CSS(`a[href="/ui/syncs/accounts"]`))); err != nil {
		t.Fatalf("opening the sync page: %v", err)
	}
	if _, err := chromedp.RunResponse(tab, chromedp.Click(chromedp.CSS(`.actions form:first-child button`))); err != nil {
		t.Fatalf("pressing Run now on the sync page: %v", err)
	}
	waitFor(t, tab, "the first 20 rejected rows", `document.querySelectorAll("table.rejects tbody tr").length === 20`)
	txt = pageText(t, tab)
	for _, want := range []string{"partial", "50 rows rejected; the first 20 below", "part-", "crm", "HTTP 400", "is on the blocklist"} {
		if !strings.Contains(txt, want) {
			t.Errorf("the sync page after a run with rejects does not show %q:\n%s", want, txt)
		}
	}
	do(t, tab, "scrolling to the rejects", chromedp.ScrollIntoView(chromedp.CSS(`h1`)))
	screenshot(t, tab, "status-rejects.png")
	if errs := console.take(); len(errs) > 0 {
		t.Errorf("the page reported errors:\n%s", strings.Join(errs, "\n"))
	}

	// On a phone's screen nothing is wider than the screen: wide tables scroll in their
	// own box.
	for _, path := range []string{"/", "/ui/syncs/accounts"} {
		do(t, tab, "loading "+path+" on a phone's screen",
			chromedp.EmulateViewport(390, 844, chromedp.EmulateMobile, chromedp.EmulateScale(2)),
			chromedp.Navigate(s.url+path))
		if wide := run(t, tab, "measuring", chromedp.Evaluate[bool](`document.documentElement.scrollWidth > window.innerWidth`)); wide {
			t.Errorf("%s is wider than a phone's screen", path)
		}
	}
	do(t, tab, "back to a laptop's screen", chromedp.ResetViewport())

	// Without JavaScript the page is whole: the server rendered it.
	noJS := newTab(t, browser)
	setAuth(t, noJS, token)
	do(t, noJS, "turning JavaScript off", chromedp.Func(func(ctx context.Context, _ *chromedp.Target) error {
		_, err := chromedp.Call(ctx, emulation.SetScriptExecutionDisabled, emulation.SetScriptExecutionDisabledParams{Value: true})
		return err
	}))
	do(t, noJS, "loading the sync page without JavaScript", chromedp.Navigate(s.url+"/ui/syncs/accounts"))
	if n := run(t, noJS, "counting rows", chromedp.Evaluate[int](`document.querySelectorAll("table.rejects tbody tr").length`)); n != 20 {
		t.Errorf("without JavaScript the sync page lists %d rejected rows, want 20", n)
	}

	// Another site's page submits the Run now form with the browser's credentials:
	// refused, and no run starts.
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprintf(w, `<!doctype html><form id="f" method="post" action="%s/ui/syncs/users/run"><input name="full" value="1"></form>
<script>document.getElementById("f").submit()</script>`, s.url)
	}))
	t.Cleanup(evil.Close)
	evilURL := strings.Replace(evil.URL, "127.0.0.1", "localhost", 1) // another site than 127.0.0.1
	do(t, tab, "visiting the other site", chromedp.Navigate(evilURL))
	waitFor(t, tab, "the cross-site POST to be answered",
		`location.href.startsWith(`+strconv.Quote(s.url)+`) && document.body.innerText.includes("cross-site request refused")`)
	all, body := s.syncs()
	if all["users"].Running || len(all["users"].Runs) != 1 {
		t.Fatalf("the cross-site POST started a run: %s", body)
	}
	s.stop(serveWait)
}
