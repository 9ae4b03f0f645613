package notify

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/pipeline"
)

// SignatureHeader carries "sha256=<hex HMAC-SHA256 of the body>" when a webhook entry
// has a secret.
const SignatureHeader = "X-Backflow-Signature"

// EventHeader carries the event name, so that a receiver may route without parsing.
const EventHeader = "X-Backflow-Event"

// Payload is the JSON body POSTed to a webhook entry.
type Payload struct {
	Event  string `json:"event"`
	Sync   string `json:"sync"`
	RunID  string `json:"run_id"`
	Status string `json:"status"` // ok | partial | failed, or running for run.started
	// PreviousStatus is the status of the sync's previous run ("" when none or unknown).
	PreviousStatus string `json:"previous_status,omitempty"`
	Error          string `json:"error,omitempty"`
	// Report is the run report (absent for run.started).
	Report json.RawMessage `json:"report,omitempty"`
	// URL is the sync's page on the status page, when serve.public_url is set.
	URL string `json:"url,omitempty"`
}

// Signature returns the X-Backflow-Signature value of body under secret.
func Signature(secret, body []byte) string {
	mac := hmac.New(sha256.New, secret)
	mac.Write(body)
	return "sha256=" + hex.EncodeToString(mac.Sum(nil))
}

// target is one notify entry of the config.
type target struct {
	kind   string // config.NotifySlack | config.NotifyWebhook
	url    string
	secret []byte
	on     map[string]bool // event names
	// label names the entry in logs: its config path, type and host — never the URL,
	// whose path or query is often the credential.
	label string

	mu sync.Mutex
	// tail is closed when the last notification handed to this target is done: each
	// waits for the one before, so that a receiver gets a run's events in order
	// (run.started before run.failed) and one slow receiver holds one goroutine chain.
	tail chan struct{}
}

func newTarget(e config.Notify, path string) *target {
	host := "?"
	if u, err := url.Parse(e.URL); err == nil {
		host = u.Host
	}
	t := &target{kind: e.Type, url: e.URL, on: subscriptions(e.On), label: path + " (" + e.Type + " to " + host + ")"}
	if e.Type == config.NotifyWebhook && e.Secret != "" {
		t.secret = []byte(e.Secret)
	}
	return t
}

// event is one event of one run, with what every kind of target needs to word it.
type event struct {
	name, sync, runID, status, prev, err string
	report                               json.RawMessage
	summary                              string // counts, for Slack
}

// send delivers evs to t in the background, in order, after what was sent to t before.
func (n *Notifier) send(t *target, evs []event) {
	n.pending.Add(1)
	t.mu.Lock()
	prev, done := t.tail, make(chan struct{})
	t.tail = done
	t.mu.Unlock()
	go func() {
		defer n.pending.Done()
		defer close(done)
		if prev != nil {
			<-prev
		}
		for _, ev := range evs {
			n.deliver(t, ev)
		}
	}()
}

// deliver makes up to n.attempts attempts, each bounded by n.timeout, and logs the
// outcome. It never returns an error: a notification does not change a run.
func (n *Notifier) deliver(t *target, ev event) {
	body, err := n.body(t, ev)
	log := n.log.With("sync", ev.sync, "run_id", ev.runID, "event", ev.name, "target", t.label)
	if err != nil {
		log.Error("notification not sent", "error", err)
		return
	}
	began := time.Now()
	var last error
	for attempt := 1; attempt <= n.attempts; attempt++ {
		if attempt > 1 {
			time.Sleep(n.backoff << (attempt - 2))
		}
		retry, err := n.post(t, ev.name, body)
		if err == nil {
			log.Debug("notification sent", "attempts", attempt, "took", time.Since(began).Round(time.Millisecond).String())
			return
		}
		last = err
		if !retry {
			break
		}
	}
	log.Warn("notification not delivered", "error", last.Error())
}

// post makes one attempt. retry tells whether another attempt may succeed. Errors name
// the host at most, never the URL.
func (n *Notifier) post(t *target, name string, body []byte) (retry bool, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), n.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.url, bytes.NewReader(body))
	if err != nil {
		return false, errors.New("building the request: invalid URL")
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "backflow")
	req.Header.Set(EventHeader, name)
	if t.secret != nil {
		req.Header.Set(SignatureHeader, Signature(t.secret, body))
	}
	res, err := n.client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return true, fmt.Errorf("no answer within %s", n.timeout)
		}
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // url.Error quotes the URL
		}
		return true, fmt.Errorf("POST to %s: %s", req.URL.Host, config.Redact(err.Error(), t.secrets()))
	}
	defer res.Body.Close()
	snippet, _ := io.ReadAll(io.LimitReader(res.Body, 256))
	_, _ = io.Copy(io.Discard, io.LimitReader(res.Body, 64<<10)) // let the connection be reused
	if res.StatusCode >= 200 && res.StatusCode < 300 {
		return false, nil
	}
	msg := fmt.Sprintf("%s answered %s", req.URL.Host, res.Status)
	if s := strings.Join(strings.Fields(string(snippet)), " "); s != "" {
		msg += ": " + config.Redact(s, t.secrets())
	}
	retryable := res.StatusCode >= 500 || res.StatusCode == http.StatusTooManyRequests || res.StatusCode == http.StatusRequestTimeout
	return retryable, errors.New(msg)
}

// secrets are the values of t that must never be logged: the URL, its path and query
// (whole, and every longer segment or value: a receiver's answer may echo any of them)
// and the signing secret.
func (t *target) secrets() []string {
	out := []string{t.url, string(t.secret)}
	u, err := url.Parse(t.url)
	if err != nil {
		return out
	}
	long := func(s string) {
		if len(s) >= 8 {
			out = append(out, s)
		}
	}
	long(u.RequestURI())
	long(u.EscapedPath())
	long(u.Path)
	long(u.RawQuery)
	for _, seg := range strings.Split(u.Path, "/") {
		long(seg)
	}
	for _, vs := range u.Query() {
		for _, v := range vs {
			long(v)
		}
	}
	return out
}

// body is the request body for t: a Payload for a webhook, {"text": …} for Slack.
func (n *Notifier) body(t *target, ev event) ([]byte, error) {
	if t.kind == config.NotifySlack {
		b, err := json.Marshal(map[string]string{"text": n.slackText(ev)})
		if err != nil {
			return nil, fmt.Errorf("encoding the Slack message: %w", err)
		}
		return b, nil
	}
	b, err := json.Marshal(Payload{
		Event: ev.name, Sync: ev.sync, RunID: ev.runID, Status: ev.status, PreviousStatus: ev.prev,
		Error: ev.err, Report: ev.report, URL: n.syncLink(ev.sync),
	})
	if err != nil {
		return nil, fmt.Errorf("encoding the webhook payload: %w", err)
	}
	return b, nil
}

// slackText is a short message for people: what happened, the counts, the error and
// the link to the sync's page.
func (n *Notifier) slackText(ev event) string {
	var head string
	name := "*" + slackEscape(ev.sync) + "*"
	run := " (run " + slackEscape(ev.runID) + ")"
	switch ev.name {
	case EventStarted:
		head = "backflow: sync " + name + " started" + run
	case EventSucceeded:
		head = "backflow: sync " + name + " succeeded" + run
	case EventPartial:
		head = "backflow: sync " + name + " finished with rejected files or rows (partial)" + run
	case EventFailed:
		head = "backflow: sync " + name + " failed" + run
	case EventRecovered:
		head = "backflow: sync " + name + " recovered: the run is ok after a " + slackEscape(ev.prev) + " one" + run
	default:
		head = "backflow: sync " + name + ": " + slackEscape(ev.name) + run
	}
	lines := []string{head}
	if ev.summary != "" {
		lines = append(lines, slackEscape(ev.summary))
	}
	if ev.err != "" {
		e := ev.err
		if len(e) > 1000 {
			e = e[:1000] + "…"
		}
		lines = append(lines, "error: "+slackEscape(e))
	}
	if link := n.syncLink(ev.sync); link != "" {
		lines = append(lines, link)
	}
	return strings.Join(lines, "\n")
}

// slackEscape escapes the three characters Slack's text format gives a meaning to.
func slackEscape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(s)
}

// summarize is the counts of a report in one or two lines.
func summarize(r *pipeline.Report) string {
	s := fmt.Sprintf("rows: %d read, %d sent, %d unchanged, %d rejected; files: %d read, %d rejected",
		r.Rows.Read, r.Rows.Sent, r.Rows.Unchanged, r.Rows.Rejected, r.Files.Read, r.Files.Rejected)
	if len(r.Destinations) > 0 {
		var ds []string
		for _, name := range slices.Sorted(maps.Keys(r.Destinations)) {
			d := r.Destinations[name]
			if d == nil {
				continue
			}
			ds = append(ds, fmt.Sprintf("%s: %d delivered, %d failed", name, d.Delivered, d.Failed))
		}
		s += "\n" + strings.Join(ds, "; ")
	}
	return s
}

func itoa(i int) string { return strconv.Itoa(i) }
