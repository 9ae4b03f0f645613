// Package notify tells people and systems what happened to a sync's runs: a short text
// to Slack incoming webhooks, a JSON document (optionally signed) to webhooks.
//
// Events (SPEC.md, "Notifications"): run.started and run.succeeded on every run;
// run.failed and run.partial when a sync enters that status — its previous run had
// another status or there was none; sync.recovered on the first ok run after a failed
// or partial one. A notification never changes a run: it is sent in the background,
// retried briefly, and logged when it cannot be delivered.
package notify

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/pipeline"
)

// Event names, as sent in a webhook's "event" field.
const (
	EventStarted   = "run.started"
	EventSucceeded = "run.succeeded"
	EventPartial   = "run.partial"
	EventFailed    = "run.failed"
	EventRecovered = "sync.recovered"
)

// StatusRunning is the status a run.started event carries: the run has no report yet.
const StatusRunning = "running"

// Defaults for the Options left at zero.
const (
	// DefaultTimeout bounds one attempt to deliver one notification.
	DefaultTimeout = 5 * time.Second
	// DefaultAttempts is how many times a notification is tried.
	DefaultAttempts = 3
	// DefaultBackoff is the wait before the second attempt; it doubles after each one.
	DefaultBackoff = 250 * time.Millisecond
	// historyTimeout bounds reading the previous run from the history.
	historyTimeout = 10 * time.Second
)

// History reads a sync's run reports (JSON), newest first; state.Store satisfies it.
type History interface {
	History(ctx context.Context, sync string) ([][]byte, error)
}

// Options configure a Notifier. Zero values take the defaults above.
type Options struct {
	// Config provides the notify entries (top level and per sync) and
	// serve.public_url. Nil: nothing is ever sent.
	Config *config.Config
	// Client sends the notifications. Nil: a client of the Notifier's own that does not
	// follow redirects (a signed body is never re-sent elsewhere).
	Client *http.Client
	// History is where Finished reads the sync's previous run. Nil: every run is judged
	// as the sync's first.
	History History
	// Logger receives a line per notification that could not be delivered (warn) and
	// per notification sent (debug); nil discards them. No URL appears in them.
	Logger *slog.Logger
	// Timeout bounds one attempt; Attempts is how many are made (on network errors,
	// timeouts, 408, 429 and 5xx); Backoff is the first wait between two, doubled after.
	Timeout  time.Duration
	Attempts int
	Backoff  time.Duration
}

// Notifier sends the notifications of runs. Its methods may be called from any
// goroutine; the methods of a nil *Notifier do nothing, so that a caller without
// notifications (a dry run, a test) needs no check.
type Notifier struct {
	client    *http.Client
	history   History
	log       *slog.Logger
	publicURL string
	timeout   time.Duration
	attempts  int
	backoff   time.Duration
	// targets are each sync's notify entries: the top-level ones, then its own.
	targets map[string][]*target

	pending sync.WaitGroup // one per target with events of a run still being sent
}

// New builds a Notifier for the syncs of opts.Config, which Load has validated.
func New(opts Options) *Notifier {
	n := &Notifier{
		client:   opts.Client,
		history:  opts.History,
		log:      opts.Logger,
		timeout:  opts.Timeout,
		attempts: opts.Attempts,
		backoff:  opts.Backoff,
		targets:  map[string][]*target{},
	}
	if n.client == nil {
		n.client = &http.Client{
			Transport:     http.DefaultTransport.(*http.Transport).Clone(),
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	if n.log == nil {
		n.log = slog.New(slog.DiscardHandler)
	}
	if n.timeout <= 0 {
		n.timeout = DefaultTimeout
	}
	if n.attempts <= 0 {
		n.attempts = DefaultAttempts
	}
	if n.backoff <= 0 {
		n.backoff = DefaultBackoff
	}
	if c := opts.Config; c != nil {
		n.publicURL = c.Serve.PublicURL
		for i, s := range c.Syncs {
			var ts []*target
			for j, e := range c.Notify {
				ts = append(ts, newTarget(e, "notify["+itoa(j)+"]"))
			}
			for j, e := range s.Notify {
				ts = append(ts, newTarget(e, "syncs["+itoa(i)+"].notify["+itoa(j)+"]"))
			}
			if len(ts) > 0 {
				n.targets[s.Name] = ts
			}
		}
	}
	return n
}

// MaxDelay is the longest one notification can take, every attempt timing out: how
// long Wait may block after the last Finished.
func (n *Notifier) MaxDelay() time.Duration {
	if n == nil {
		return 0
	}
	d := time.Duration(n.attempts) * n.timeout
	for i := 1; i < n.attempts; i++ {
		d += n.backoff << (i - 1)
	}
	return d
}

// Started sends run.started to the sync's targets that subscribe to it. It returns at
// once; the sending goes on in the background.
func (n *Notifier) Started(syncName, runID string) {
	if n == nil {
		return
	}
	ev := event{name: EventStarted, sync: syncName, runID: runID, status: StatusRunning}
	for _, t := range n.targets[syncName] {
		if t.on[EventStarted] {
			n.send(t, []event{ev})
		}
	}
}

// Finished sends the events of a finished run (r) to the sync's targets that subscribe
// to them. It judges the run against the sync's previous run, read from the history
// now: call it before r is appended to the history (a report with r's run id is skipped
// anyway). It returns once the history is read (within ctx, at most 10 s); the sending
// goes on in the background. A dry run raises nothing. r is not kept.
func (n *Notifier) Finished(ctx context.Context, r *pipeline.Report) {
	if n == nil || r == nil || r.DryRun {
		return
	}
	ts := n.targets[r.Sync]
	if len(ts) == 0 {
		return
	}
	// A shard's runs are judged against that shard's own history (`sync --shard`).
	historyName := r.Sync
	if r.Shard != "" {
		if shard, err := pipeline.ParseShard(r.Shard); err == nil {
			historyName = shard.StateName(r.Sync)
		}
	}
	prev := n.previous(ctx, historyName, r.RunID)
	names := Transition(prev, r.Status)
	if len(names) == 0 {
		return
	}
	report, err := json.Marshal(r)
	if err != nil { // a report is plain data: a bug, but the other fields still go
		n.log.Error("encoding the run report for notifications", "sync", r.Sync, "run_id", r.RunID, "error", err)
		report = nil
	}
	base := event{sync: r.Sync, runID: r.RunID, status: r.Status, prev: prev, err: r.Error, report: report, summary: summarize(r)}
	for _, t := range ts {
		var evs []event
		for _, name := range names {
			if t.on[name] {
				ev := base
				ev.name = name
				evs = append(evs, ev)
			}
		}
		if len(evs) > 0 {
			n.send(t, evs)
		}
	}
}

// Wait blocks until every notification sent so far is delivered or given up (at most
// MaxDelay after the last one began), or until ctx is done.
func (n *Notifier) Wait(ctx context.Context) error {
	if n == nil {
		return nil
	}
	done := make(chan struct{})
	go func() { n.pending.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Transition returns the events a finished run raises, given its status and the status
// of the sync's previous run (prev; "" when there was none or it is unknown), in the
// order they are sent. An unknown status counts as failed.
func Transition(prev, status string) []string {
	switch status {
	case pipeline.StatusOK:
		if prev == pipeline.StatusFailed || prev == pipeline.StatusPartial {
			return []string{EventSucceeded, EventRecovered}
		}
		return []string{EventSucceeded}
	case pipeline.StatusPartial:
		if prev != pipeline.StatusPartial {
			return []string{EventPartial}
		}
	default:
		if prev != pipeline.StatusFailed {
			return []string{EventFailed}
		}
	}
	return nil
}

// previous returns the status of the sync's newest recorded run other than runID, ""
// when there is none; a history that cannot be read is logged and counts as none, so a
// failure is reported rather than missed.
func (n *Notifier) previous(ctx context.Context, syncName, runID string) string {
	if n.history == nil {
		return ""
	}
	ctx, cancel := context.WithTimeout(ctx, historyTimeout)
	defer cancel()
	reports, err := n.history.History(ctx, syncName)
	if err != nil {
		n.log.Warn("notifications: reading the run history; judging this run as the first", "sync", syncName, "run_id", runID, "error", err)
		return ""
	}
	for _, b := range reports {
		var head struct {
			RunID  string `json:"run_id"`
			Status string `json:"status"`
			DryRun bool   `json:"dry_run"`
		}
		if json.Unmarshal(b, &head) != nil || head.Status == "" || head.DryRun || (runID != "" && head.RunID == runID) {
			continue
		}
		return head.Status
	}
	return ""
}

// syncLink is the sync's page on serve's status page, "" without serve.public_url.
func (n *Notifier) syncLink(syncName string) string {
	if n.publicURL == "" {
		return ""
	}
	base := n.publicURL
	for len(base) > 0 && base[len(base)-1] == '/' {
		base = base[:len(base)-1]
	}
	return base + "/ui/syncs/" + url.PathEscape(syncName)
}

// onEvent maps the names of `on:` to event names.
func onEvent(on string) string {
	switch on {
	case config.NotifyStarted:
		return EventStarted
	case config.NotifySucceeded:
		return EventSucceeded
	case config.NotifyPartial:
		return EventPartial
	case config.NotifyFailed:
		return EventFailed
	case config.NotifyRecovered:
		return EventRecovered
	}
	return ""
}

func subscriptions(on []string) map[string]bool {
	m := make(map[string]bool, len(on))
	for _, o := range on {
		if ev := onEvent(o); ev != "" {
			m[ev] = true
		}
	}
	return m
}
