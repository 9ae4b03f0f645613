package schedule

import (
	"bytes"
	"cmp"
	"compress/gzip"
	"context"
	"crypto/rand"
	"embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"html/template"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/backflowhq/backflow/pipeline"
	"github.com/backflowhq/backflow/state"
)

// The status page: server-rendered HTML from embedded templates, with its CSS and a
// few lines of script inlined, so that one request gives the whole page and nothing
// is fetched from anywhere else. Without JavaScript the page is complete and reloads
// itself every 30 s; with it, the live part follows a run second by second by polling
// GET /ui/live, and the rest is re-fetched when a run starts or ends.

//go:embed templates/*.html templates/ui.css templates/ui.js
var uiFiles embed.FS

const (
	// RejectsShown is how many rejected rows the sync page lists.
	RejectsShown = 20
	// recentRuns is how many runs, of every sync, the home page lists.
	recentRuns = 20
	// syncPageRuns is how many runs the sync page lists unless asked for all
	// (?runs=all): serve.history may keep thousands.
	syncPageRuns = 50
	// rejectsTimeout bounds reading the rejects of a sync page (an s3:// state lists
	// and reads objects).
	rejectsTimeout = 5 * time.Second
	// gzipMin is the least body worth compressing.
	gzipMin = 1024
)

// favicon is an inline SVG: the page makes no request of its own for an icon.
const favicon = template.URL(`data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 16 16'%3E%3Crect width='16' height='16' rx='3' fill='%232457c5'/%3E%3Cpath d='M12 4v5a3 3 0 0 1-3 3H4m2.5-2.5L4 12l2.5 2.5' stroke='%23fff' stroke-width='1.8' fill='none' stroke-linecap='round'/%3E%3C/svg%3E`)

var (
	uiCSS = mustRead("templates/ui.css")
	uiJS  = mustRead("templates/ui.js")

	indexTmpl = mustPage("templates/index.html")
	syncTmpl  = mustPage("templates/sync.html")
)

func mustRead(name string) string {
	b, err := uiFiles.ReadFile(name)
	if err != nil {
		panic(err)
	}
	return string(b)
}

func mustPage(name string) *template.Template {
	return template.Must(template.New("").Funcs(uiFuncs).ParseFS(uiFiles, "templates/layout.html", name))
}

var uiFuncs = template.FuncMap{
	"num":     formatCount,
	"dur":     formatDuration,
	"ts":      func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05 UTC") },
	"iso":     func(t time.Time) string { return t.UTC().Format(time.RFC3339) },
	"tsShort": func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05") },
	"rel":     formatRelative,
	"runs":    func(runs []runView, withSync bool) runsTable { return runsTable{runs, withSync} },
	"isoOK":   func(t time.Time) bool { return !t.IsZero() },
	"runForm": func(sync string, full, disabled bool, back string) runForm {
		return runForm{sync, full, disabled, back}
	},
}

func (s *Server) addUIRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /{$}", s.handleIndexPage)
	mux.HandleFunc("GET /ui/syncs/{name}", s.handleSyncPage)
	mux.HandleFunc("POST /ui/syncs/{name}/run", s.handleUIRun)
	mux.HandleFunc("GET /ui/live", s.handleLive)
}

// ---- view models ----

type pageData struct {
	Title   string
	Nonce   string
	Gen     string
	Sync    string // the sync page's sync, "" on the home page
	CSS     template.CSS
	JS      template.JS
	Favicon template.URL
	Now     time.Time
	Flash   *flash

	Syncs  []syncView // home page
	Recent []runView
	One    *syncView // sync page
	Reject *rejectsView
}

type flash struct {
	Kind string // ok | warn
	Text string
}

type syncView struct {
	Name         string
	Schedule     string
	NextRun      time.Time // zero: none
	Destinations []string
	Running      bool
	Current      *RunStatus
	Elsewhere    *state.Holder // another replica's run holds the lease
	Live         *liveView
	Last         *runView
	Runs         []runView
	Kept         int // runs in the history, of which Runs are shown
}

type runView struct {
	Sync           string
	RunID          string
	Status         string
	Mode           string
	Full           bool
	FullSyncReason string
	Started        time.Time
	Duration       time.Duration
	Files          pipeline.FileCounts
	Rows           pipeline.RowCounts
	Destinations   []destView
	Error          string
	FileErrors     []pipeline.FileError
	HasRejects     bool
}

type destView struct {
	Name              string
	Delivered, Failed int64
}

// liveView is a run in progress as shown, with its numbers already formatted: the
// template and GET /ui/live show the same strings.
type liveView struct {
	Waiting      bool
	Fields       map[string]string
	Destinations []string
}

type runsTable struct {
	Runs     []runView
	WithSync bool
}

type runForm struct {
	Sync     string
	Full     bool
	Disabled bool
	Back     string
}

type rejectsView struct {
	RunID string
	Where string
	Rows  []rejectRow
	// Total is the run's count of rejected rows from its report; -1 when the report
	// is no longer kept.
	Total int64
	Err   string
}

// rejectRow is the part of a rejects file's line (SPEC.md) that the page shows: the
// message itself stays in the file.
type rejectRow struct {
	File        string `json:"file"`
	Row         int64  `json:"row"`
	Destination string `json:"destination"`
	Reason      string `json:"reason"`
}

// ---- handlers ----

func (s *Server) handleIndexPage(w http.ResponseWriter, r *http.Request) {
	s.loadHistory(r.Context())
	statuses := s.Status()
	d := s.newPage("Syncs", "", statuses, r)
	for _, ss := range statuses {
		d.Syncs = append(d.Syncs, s.syncView(ss, 1))
	}
	d.Recent = recent(statuses, d.Syncs, recentRuns)
	s.render(w, r, indexTmpl, http.StatusOK, d)
}

func (s *Server) handleSyncPage(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	st, ok := s.byName[name]
	if !ok {
		http.Error(w, fmt.Sprintf("backflow: no sync named %q", name), http.StatusNotFound)
		return
	}
	s.loadHistory(r.Context())
	s.mu.Lock()
	ss := s.statusLocked(st)
	s.mu.Unlock()
	d := s.newPage(name, name, []SyncStatus{ss}, r)
	keep := syncPageRuns
	if r.URL.Query().Get("runs") == "all" {
		keep = len(ss.Runs)
	}
	v := s.syncView(ss, keep)
	v.Kept = len(ss.Runs)
	d.One = &v
	if s.store != nil {
		cur := ""
		if ss.Current != nil {
			cur = ss.Current.RunID
		}
		d.Reject = s.readRejects(r.Context(), name, cur, v.Runs)
		for i := range v.Runs {
			v.Runs[i].HasRejects = d.Reject != nil && v.Runs[i].RunID == d.Reject.RunID
		}
	}
	s.render(w, r, syncTmpl, http.StatusOK, d)
}

// handleUIRun is the status page's Run now and Full sync buttons: a form POST answered
// with a redirect back to the page (post/redirect/get), which says what happened.
func (s *Server) handleUIRun(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	st, ok := s.byName[name]
	if !ok {
		http.Error(w, fmt.Sprintf("backflow: no sync named %q", name), http.StatusNotFound)
		return
	}
	if err := r.ParseForm(); err != nil {
		code := http.StatusBadRequest
		if _, big := errors.AsType[*http.MaxBytesError](err); big {
			code = http.StatusRequestEntityTooLarge
		}
		http.Error(w, "backflow: reading the form: "+err.Error(), code)
		return
	}
	full := r.PostFormValue("full") == "1"
	q := url.Values{}
	id, queued, err := s.trigger(st, full, TriggerAPI, time.Time{})
	switch {
	case errors.Is(err, ErrRunning):
		q.Set("running", id)
	case errors.Is(err, ErrStopping):
		q.Set("stopping", "1")
	case err != nil:
		s.log.Error("starting a run from the status page", "sync", name, "error", err)
		q.Set("failed", "1")
	case queued:
		q.Set("queued", id)
	default:
		q.Set("started", id)
	}
	if full && err == nil {
		q.Set("full", "1")
	}
	q.Set("sync", name)
	back := "/ui/syncs/" + name // only the two pages of this server: never an open redirect
	if r.PostFormValue("back") == "index" {
		back = "/"
	}
	http.Redirect(w, r, back+"?"+q.Encode(), http.StatusSeeOther)
}

// liveResponse is GET /ui/live: what the page's script needs to follow runs.
type liveResponse struct {
	// Gen changes whenever a run starts, ends or is scheduled: the page then re-fetches
	// itself.
	Gen     string `json:"gen"`
	Running bool   `json:"running"`
	// Live holds, per sync with a run in progress, its formatted counts by the
	// data-k key of the element that shows them.
	Live map[string]map[string]string `json:"live"`
}

func (s *Server) handleLive(w http.ResponseWriter, r *http.Request) {
	// Other replicas' runs start and end in the store: read it (at most every
	// HistoryRefresh), so that the generation changes and the page reloads.
	s.loadHistory(r.Context())
	statuses := s.Status()
	if name := r.URL.Query().Get("sync"); name != "" {
		st, ok := s.byName[name]
		if !ok {
			writeJSON(w, http.StatusNotFound, errorResponse{Error: fmt.Sprintf("unknown sync %q", name)})
			return
		}
		s.mu.Lock()
		statuses = []SyncStatus{s.statusLocked(st)}
		s.mu.Unlock()
	}
	resp := liveResponse{Gen: generation(statuses), Live: map[string]map[string]string{}}
	for _, ss := range statuses {
		if ss.RunningElsewhere {
			resp.Running = true // poll as often as for a run here: it ends in the store
		}
		if ss.Current == nil {
			continue
		}
		resp.Running = true
		if lv := s.liveView(ss); !lv.Waiting {
			resp.Live[ss.Name] = lv.Fields
		}
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, resp)
}

// ---- building the views ----

// recent returns the n newest runs of all syncs. Each history is newest first, so
// this merges them from their heads, decoding only the reports it shows (decoding is
// most of the cost of the page when histories are long). views[i] holds the decoded
// head of statuses[i].
func recent(statuses []SyncStatus, views []syncView, n int) []runView {
	type cursor struct {
		next int     // index in Runs of head
		head runView // decoded Runs[next]
	}
	cur := make([]*cursor, len(statuses))
	for i, v := range views {
		if v.Last != nil {
			cur[i] = &cursor{head: *v.Last}
		}
	}
	var out []runView
	for len(out) < n {
		best := -1
		for i, c := range cur {
			if c != nil && (best < 0 || c.head.Started.After(cur[best].head.Started)) {
				best = i
			}
		}
		if best < 0 {
			break
		}
		c := cur[best]
		out = append(out, c.head)
		runs := statuses[best].Runs
		if c.next++; c.next < len(runs) {
			c.head = decodeRun(statuses[best].Name, runs[c.next])
		} else {
			cur[best] = nil
		}
	}
	return out
}

func (s *Server) newPage(title, sync string, statuses []SyncStatus, r *http.Request) *pageData {
	return &pageData{
		Title:   title,
		Nonce:   newNonce(),
		Gen:     generation(statuses),
		Sync:    sync,
		CSS:     template.CSS(uiCSS),
		JS:      template.JS(uiJS),
		Favicon: favicon,
		Now:     s.now(),
		Flash:   flashFrom(r.URL.Query()),
	}
}

// syncView decodes up to keep of the sync's runs.
func (s *Server) syncView(ss SyncStatus, keep int) syncView {
	v := syncView{Name: ss.Name, Schedule: ss.Schedule, Running: ss.Running, Current: ss.Current}
	if ss.RunningElsewhere {
		v.Elsewhere = ss.Lease
	}
	if st := s.live[ss.Name]; st != nil {
		v.Destinations = st.order
	}
	if ss.NextRun != nil {
		v.NextRun = *ss.NextRun
	}
	if ss.Current != nil {
		lv := s.liveView(ss)
		v.Live = &lv
	}
	for _, raw := range ss.Runs[:min(keep, len(ss.Runs))] {
		v.Runs = append(v.Runs, decodeRun(ss.Name, raw))
	}
	if len(v.Runs) > 0 {
		v.Last = &v.Runs[0]
	} else if len(ss.Runs) > 0 {
		last := decodeRun(ss.Name, ss.Runs[0])
		v.Last = &last
	}
	return v
}

func decodeRun(sync string, raw json.RawMessage) runView {
	var rep pipeline.Report
	if err := json.Unmarshal(raw, &rep); err != nil {
		return runView{Sync: sync, Status: "unreadable", Error: "the stored report cannot be read: " + err.Error()}
	}
	v := runView{
		Sync: cmp.Or(rep.Sync, sync), RunID: rep.RunID, Status: rep.Status, Mode: rep.Mode,
		Full: rep.FullSync, FullSyncReason: rep.FullSyncReason, Started: rep.StartedAt,
		Duration: time.Duration(rep.DurationMS) * time.Millisecond,
		Files:    rep.Files, Rows: rep.Rows, Error: rep.Error, FileErrors: rep.FileErrors,
	}
	for name, c := range rep.Destinations {
		if c != nil {
			v.Destinations = append(v.Destinations, destView{name, c.Delivered, c.Failed})
		}
	}
	slices.SortFunc(v.Destinations, func(a, b destView) int { return cmp.Compare(a.Name, b.Name) })
	return v
}

// liveView formats the run in progress of ss, which must have one.
func (s *Server) liveView(ss SyncStatus) liveView {
	if ss.Current.State == "waiting" {
		return liveView{Waiting: true}
	}
	l := s.live[ss.Name]
	if l == nil {
		return liveView{Fields: map[string]string{}}
	}
	snap := l.snapshot()
	now := time.Now()
	if snap.RunID != ss.Current.RunID { // the run has not begun counting yet
		snap = LiveRun{FilesPlanned: -1, Started: now}
		for _, n := range l.order {
			snap.Destinations = append(snap.Destinations, LiveDestination{Name: n})
		}
	}
	f := map[string]string{
		"elapsed":   formatDuration(now.Sub(snap.Started)),
		"rows_read": formatCount(snap.RowsRead),
		"rows_sent": formatCount(snap.RowsSent()),
		"rate":      formatCount(int64(snap.SendRate(now))) + " rows/s",
		"read_rate": formatCount(int64(snap.Rate(now))) + " rows/s",
		"read":      formatBytes(snap.BytesRead),
		"progress":  "",
	}
	if p := snap.Progress(); p >= 0 {
		f["progress"] = strconv.FormatFloat(p, 'f', 3, 64)
	}
	if snap.FilesPlanned < 0 {
		f["files"] = "listing and planning"
	} else {
		// A file's bytes count once its rows are handed to the destinations: rows
		// read run ahead of them by the bounded queues.
		f["files"] = fmt.Sprintf("%s of %s files done, %s of %s", formatCount(snap.FilesRead), formatCount(snap.FilesPlanned),
			formatBytes(snap.BytesRead), formatBytes(snap.BytesPlanned))
	}
	v := liveView{Fields: f}
	for _, d := range snap.Destinations {
		v.Destinations = append(v.Destinations, d.Name)
		f["d."+d.Name+".delivered"] = formatCount(d.Delivered)
		f["d."+d.Name+".failed"] = formatCount(d.Failed)
		f["d."+d.Name+".inflight"] = formatCount(d.InFlight)
	}
	return v
}

// readRejects reads the first rejected rows of the sync's last run with rejects,
// leaving out the run in progress (its file is still being written). nil: none.
func (s *Server) readRejects(ctx context.Context, sync, current string, runs []runView) *rejectsView {
	ctx, cancel := context.WithTimeout(ctx, rejectsTimeout)
	defer cancel()
	ids, err := s.store.RejectsRuns(ctx, sync)
	if err != nil {
		s.log.Warn("listing rejects for the status page", "sync", sync, "error", err)
		return &rejectsView{Total: -1, Err: "the rejects cannot be listed: " + err.Error()}
	}
	ids = slices.DeleteFunc(ids, func(id string) bool { return id == current })
	if len(ids) == 0 {
		return nil
	}
	v := &rejectsView{RunID: ids[0], Total: -1}
	for _, r := range runs {
		if r.RunID == v.RunID {
			v.Total = r.Rows.Rejected
		}
	}
	rc, where, err := s.store.OpenRejects(ctx, sync, v.RunID)
	v.Where = where
	if err != nil {
		if !errors.Is(err, state.ErrNoRejects) {
			s.log.Warn("reading rejects for the status page", "sync", sync, "run_id", v.RunID, "error", err)
		}
		v.Err = "the rejects file cannot be read: " + err.Error()
		return v
	}
	defer rc.Close()
	// A decoder, not a line scanner: a line holds the whole message, which may be as
	// large as max_record_bytes. Only the first rows are decoded.
	dec := json.NewDecoder(rc)
	for len(v.Rows) < RejectsShown {
		var row rejectRow
		if err := dec.Decode(&row); err != nil {
			if !errors.Is(err, io.EOF) {
				v.Err = fmt.Sprintf("the rejects file is unreadable after %d rows: %v", len(v.Rows), err)
			}
			break
		}
		v.Rows = append(v.Rows, row)
	}
	return v
}

// generation identifies what the page shows apart from the live counts: which runs
// are in progress or waiting, the newest finished run and the next due time of each
// sync. The script re-fetches the page when it changes.
func generation(statuses []SyncStatus) string {
	h := fnv.New64a()
	for _, ss := range statuses {
		io.WriteString(h, ss.Name)
		if ss.Current != nil {
			io.WriteString(h, "\x00"+ss.Current.RunID+ss.Current.State)
		}
		if ss.RunningElsewhere {
			io.WriteString(h, "\x00elsewhere "+ss.Lease.RunID)
		}
		if ss.NextRun != nil {
			io.WriteString(h, "\x00"+ss.NextRun.Format(time.RFC3339))
		}
		io.WriteString(h, "\x00"+strconv.Itoa(len(ss.Runs)))
		if len(ss.Runs) > 0 {
			h.Write(ss.Runs[0])
		}
		io.WriteString(h, "\x01")
	}
	return strconv.FormatUint(h.Sum64(), 36)
}

func flashFrom(q url.Values) *flash {
	sync := q.Get("sync")
	what := "A run"
	if q.Get("full") == "1" {
		what = "A full sync"
	}
	switch {
	case q.Get("started") != "":
		return &flash{"ok", fmt.Sprintf("%s of %s started (run %s).", what, sync, q.Get("started"))}
	case q.Get("queued") != "":
		return &flash{"ok", fmt.Sprintf("%s of %s is waiting for a free slot (run %s).", what, sync, q.Get("queued"))}
	case q.Get("running") != "":
		return &flash{"warn", fmt.Sprintf("%s is already running (run %s): nothing was started.", sync, q.Get("running"))}
	case q.Get("stopping") != "":
		return &flash{"warn", "The server is shutting down: nothing was started."}
	case q.Get("failed") != "":
		return &flash{"warn", fmt.Sprintf("The run of %s could not be started: see the server's log.", sync)}
	}
	return nil
}

// ---- writing ----

// render executes the page into a buffer first, so that a template error is a clean
// 500 rather than half a page, and compresses it for clients that accept gzip.
func (s *Server) render(w http.ResponseWriter, r *http.Request, t *template.Template, code int, d *pageData) {
	var buf bytes.Buffer
	if err := t.ExecuteTemplate(&buf, "page", d); err != nil {
		s.log.Error("rendering the status page", "path", r.URL.Path, "error", err)
		http.Error(w, "backflow: the page could not be rendered", http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	// Everything is inline, marked with this response's nonce; the page may only talk
	// to this server, and may not be framed (clickjacking of the buttons).
	h.Set("Content-Security-Policy", fmt.Sprintf("default-src 'none'; style-src 'nonce-%[1]s'; script-src 'nonce-%[1]s'; "+
		"img-src data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'", d.Nonce))
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-store")
	h.Add("Vary", "Accept-Encoding")
	body := buf.Bytes()
	if buf.Len() >= gzipMin && acceptsGzip(r) {
		var z bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&z, gzip.DefaultCompression) // the level is valid
		_, _ = zw.Write(body)
		if err := zw.Close(); err == nil {
			h.Set("Content-Encoding", "gzip")
			body = z.Bytes()
		}
	}
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(code)
	_, _ = w.Write(body)
}

func acceptsGzip(r *http.Request) bool {
	for _, part := range strings.Split(r.Header.Get("Accept-Encoding"), ",") {
		enc, params, _ := strings.Cut(strings.TrimSpace(part), ";")
		if strings.EqualFold(strings.TrimSpace(enc), "gzip") {
			return strings.ReplaceAll(params, " ", "") != "q=0"
		}
	}
	return false
}

// newNonce is a CSP nonce, in hex: nothing html/template would escape in the attribute.
func newNonce() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return hex.EncodeToString(b[:])
}

// ---- formatting ----

// formatCount writes n with thin groups of three digits: 1,234,567.
func formatCount(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	if neg {
		b.WriteByte('-')
	}
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

func formatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatInt(n, 10) + " B"
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// formatDuration is a duration as people read it: 850ms, 12s, 3m 05s, 2h 10m.
func formatDuration(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < time.Second:
		return strconv.FormatInt(d.Milliseconds(), 10) + "ms"
	case d < time.Minute:
		return strconv.Itoa(int(d.Seconds())) + "s"
	case d < time.Hour:
		return fmt.Sprintf("%dm %02ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh %02dm", int(d.Hours()), int(d.Minutes())%60)
	default:
		return fmt.Sprintf("%dd %02dh", int(d.Hours())/24, int(d.Hours())%24)
	}
}

// formatRelative says when t is from now: "in 5m 00s", "3m 12s ago".
func formatRelative(t, now time.Time) string {
	if t.IsZero() {
		return ""
	}
	if d := t.Sub(now); d >= 0 {
		return "in " + formatDuration(d.Round(time.Second))
	}
	return formatDuration(now.Sub(t).Round(time.Second)) + " ago"
}
