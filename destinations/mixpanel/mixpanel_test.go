package mixpanel_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/destinations"
	"github.com/backflowhq/backflow/destinations/destinationstest"
	"github.com/backflowhq/backflow/destinations/internal/httpapi/apitest"
	"github.com/backflowhq/backflow/destinations/mixpanel"
	"github.com/backflowhq/backflow/mapper"
)

const (
	token    = "mp-token"
	saUser   = "sa.user"
	saSecret = "sa-secret"
	project  = "42"
)

var insertIDRe = regexp.MustCompile(`^[A-Za-z0-9-]{1,36}$`)

// fake is Mixpanel's ingestion API as documented: /import?strict=1
// (https://docs.mixpanel.com/reference/import-events, 400 partial successes:
// https://docs.mixpanel.com/troubleshooting/errors/400-bad-request), /engage and /groups
// (https://docs.mixpanel.com/reference/profile-batch-update: 200 even when refused,
// verbose=1 says why). A group message is received once its group update and its
// member's $union both arrived.
type fake struct {
	mu     sync.Mutex
	groups map[string]json.RawMessage // group id → its last $set
}

func newFake() *fake { return &fake{groups: map[string]json.RawMessage{}} }

func (f *fake) handle(s *apitest.Server, r *http.Request, body []byte) apitest.Answer {
	switch r.URL.Path {
	case "/import":
		return f.importAnswer(s, r, body)
	case "/engage", "/groups":
		if r.URL.Query().Get("verbose") != "1" {
			return apitest.Answer{Status: 200, Body: "0"}
		}
		return f.updateAnswer(s, r.URL.Path, body)
	}
	return apitest.Answer{Status: 404, Body: `{"error":"not found"}`}
}

func (f *fake) importAnswer(s *apitest.Server, r *http.Request, body []byte) apitest.Answer {
	user, pass, _ := r.BasicAuth()
	q := r.URL.Query()
	if !(user == token && pass == "") && !(user == saUser && pass == saSecret && q.Get("project_id") == project) {
		return apitest.Answer{Status: 401, Body: `{"code":401,"error":"Invalid credentials","status":"Unauthorized"}`}
	}
	if q.Get("strict") != "1" {
		return apitest.Answer{Status: 400, Body: `{"code":400,"error":"test server wants strict=1"}`}
	}
	if len(body) > mixpanel.MaxImportBytes {
		return apitest.Answer{Status: 413, Body: `{"code":413,"error":"request too large","status":"Payload Too Large"}`}
	}
	var events []struct {
		Event      string                     `json:"event"`
		Properties map[string]json.RawMessage `json:"properties"`
	}
	if err := json.Unmarshal(body, &events); err != nil {
		return apitest.Answer{Status: 400, Body: `{"code":400,"error":"invalid json","status":"Bad Request"}`}
	}
	if len(events) > mixpanel.MaxPerRequest {
		return apitest.Answer{Status: 400, Body: `{"code":400,"error":"too many records","status":"Bad Request"}`}
	}
	var a apitest.Answer
	var failed []map[string]any
	for i, e := range events {
		var ms int64
		var distinct, insert string
		json.Unmarshal(e.Properties["time"], &ms)
		json.Unmarshal(e.Properties["distinct_id"], &distinct)
		json.Unmarshal(e.Properties["$insert_id"], &insert)
		switch {
		case ms == 0 || e.Event == "" || !insertIDRe.MatchString(insert):
			failed = append(failed, map[string]any{"index": i, "insert_id": insert, "field": "properties", "message": "missing time, event or $insert_id"})
		case s.Refused(distinct):
			failed = append(failed, map[string]any{"index": i, "insert_id": insert, "field": "properties.distinct_id",
				"message": "'properties.distinct_id' is invalid: refused by the test"})
		default:
			props := map[string]json.RawMessage{}
			for k, v := range e.Properties {
				if k != "time" && k != "distinct_id" && k != "$insert_id" {
					props[k] = v
				}
			}
			b, _ := json.Marshal(props)
			ts := time.UnixMilli(ms).UTC().Format(time.RFC3339Nano)
			a.Accepted = append(a.Accepted, apitest.Segment("track", insert, distinct, "", "", e.Event, b, ts))
		}
	}
	if len(failed) == 0 {
		a.Status, a.Body = 200, fmt.Sprintf(`{"code":200,"num_records_imported":%d,"status":"OK"}`, len(events))
		return a
	}
	b, _ := json.Marshal(map[string]any{"code": 400, "error": "some data points in the request failed validation",
		"status": "Bad Request", "num_records_imported": len(a.Accepted), "failed_records": failed})
	a.Status, a.Body = 400, string(b)
	return a
}

func (f *fake) updateAnswer(s *apitest.Server, path string, body []byte) apitest.Answer {
	var updates []map[string]json.RawMessage
	if err := json.Unmarshal(body, &updates); err != nil {
		return apitest.Answer{Status: 200, Body: `{"status":0,"error":"invalid json"}`}
	}
	str := func(u map[string]json.RawMessage, k string) string {
		var v string
		json.Unmarshal(u[k], &v)
		return v
	}
	for _, u := range updates {
		if str(u, "$token") != token {
			return apitest.Answer{Status: 200, Body: `{"status":0,"error":"Invalid project token"}`}
		}
		user := str(u, "$distinct_id")
		if path == "/groups" {
			user = strings.TrimPrefix(str(u, "$group_id"), "g-")
		}
		if s.Refused(user) {
			return apitest.Answer{Status: 200, Body: `{"status":0,"error":"$set is invalid: refused by the test"}`}
		}
	}
	a := apitest.Answer{Status: 200, Body: `{"status":1,"error":null}`}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, u := range updates {
		if path == "/groups" {
			if str(u, "$group_key") == "company" {
				f.groups[str(u, "$group_id")] = u["$set"]
			}
			continue
		}
		user := str(u, "$distinct_id")
		// Mixpanel keeps no id nor time of a profile update: the message is known by
		// the one it came from, once what arrived is checked against its mapping.
		orig, ok := s.Original(user)
		if set, isSet := u["$set"]; isSet {
			if ok && orig.Type == "identify" && sameJSON(set, orig.Body()) {
				a.Accepted = append(a.Accepted, apitest.Segment("identify", orig.ID, user, "", "", "", set, orig.Timestamp()))
			} else {
				a.Accepted = append(a.Accepted, apitest.Segment("identify", "unknown", user, "", "", "", set, ""))
			}
			continue
		}
		var union map[string][]string
		json.Unmarshal(u["$union"], &union)
		gids := union["company"]
		if len(gids) != 1 {
			a.Accepted = append(a.Accepted, apitest.Segment("group", "bad-union", user, "", "", "", nil, ""))
			continue
		}
		traits, known := f.groups[gids[0]]
		if ok && known && orig.Type == "group" && orig.GroupID == gids[0] && sameJSON(traits, orig.Body()) {
			a.Accepted = append(a.Accepted, apitest.Segment("group", orig.ID, user, "", gids[0], "", traits, orig.Timestamp()))
		} else {
			a.Accepted = append(a.Accepted, apitest.Segment("group", "unknown", user, "", gids[0], "", traits, ""))
		}
	}
	return a
}

func sameJSON(a, b []byte) bool {
	var x, y bytes.Buffer
	return json.Compact(&x, a) == nil && json.Compact(&y, b) == nil && bytes.Equal(x.Bytes(), y.Bytes())
}

func options() *mixpanel.Options {
	return &mixpanel.Options{ProjectToken: token, GroupKey: "company"}
}

func cfgFor(url string, o *mixpanel.Options) config.Destination {
	o.Endpoint = url
	return config.Destination{
		Type: mixpanel.Type, Name: "mp", BatchSize: mixpanel.MaxPerRequest, MaxInFlight: 4,
		Retry: config.Retry{MaxAttempts: 4, MaxBackoff: 20 * time.Millisecond}, Timeout: 5 * time.Second,
		Options: o,
	}
}

func build(t testing.TB, cfg config.Destination) destinations.Destination {
	return destinationstest.Build(t, mixpanel.Kind(), cfg)
}

func TestSuite(t *testing.T) {
	for name, o := range map[string]func() *mixpanel.Options{
		"token": options,
		"service-account": func() *mixpanel.Options {
			o := options()
			o.ServiceAccountUsername, o.ServiceAccountSecret, o.ProjectID = saUser, saSecret, project
			return o
		},
	} {
		t.Run(name, func(t *testing.T) {
			destinationstest.RunSuite(t, func(t *testing.T) (destinations.Destination, destinationstest.Receiver) {
				srv := apitest.New(t, newFake().handle)
				return build(t, cfgFor(srv.URL, o())), srv
			})
		})
	}
}

// TestShapes pins each request, byte for byte.
func TestShapes(t *testing.T) {
	srv := apitest.New(t, newFake().handle)
	d := build(t, cfgFor(srv.URL, options()))
	tr := destinationstest.NewMessage("track", "m1", "user-1", `{"amount":12.30,"time":1}`, "2024-01-02T03:04:05.678Z")
	id := destinationstest.NewMessage("identify", "m2", "user-2", `{"plan":"pro"}`, "")
	gr := destinationstest.NewMessage("group", "m3", "user-3", `{}`, "")
	long := destinationstest.NewMessage("track", strings.Repeat("x", 40), "user-4", `{}`, "2024-01-02T03:04:05Z")
	if err := d.Write(context.Background(), []mapper.Message{tr, id, gr, long}); err != nil {
		t.Fatal(err)
	}
	want := []string{
		`/import [{"event":"Order Completed","properties":{"amount":12.30,"time":1,"time":1704164645678,"distinct_id":"user-1","$insert_id":"m1"}},` +
			`{"event":"Order Completed","properties":{"time":1704164645000,"distinct_id":"user-4","$insert_id":"` + insertID(long.ID) + `"}}]`,
		`/groups [{"$token":"mp-token","$group_key":"company","$group_id":"g-user-3","$set":{}}]`,
		`/engage [{"$token":"mp-token","$distinct_id":"user-2","$set":{"plan":"pro"}}]`,
		`/engage [{"$token":"mp-token","$distinct_id":"user-3","$union":{"company":["g-user-3"]}}]`,
	}
	reqs := srv.Requests()
	if len(reqs) != len(want) {
		t.Fatalf("%d requests, want %d", len(reqs), len(want))
	}
	for i, r := range reqs {
		if got := r.Path + " " + string(r.Body); got != want[i] {
			t.Errorf("request %d:\n%s\nwant\n%s", i, got, want[i])
		}
	}
}

func insertID(id string) string {
	b := mixpanel.AppendInsertID(nil, id)
	return string(b[1 : len(b)-1])
}

func TestInsertID(t *testing.T) {
	for _, id := range []string{"a", "abc-DEF-123", strings.Repeat("z", 36)} {
		if got := insertID(id); got != id {
			t.Errorf("insert id of %q = %q, want it unchanged", id, got)
		}
	}
	for _, id := range []string{strings.Repeat("z", 37), "sync/user:1", "é", ""} {
		got := insertID(id)
		if !insertIDRe.MatchString(got) || got != insertID(id) || len(got) != 36 {
			t.Errorf("insert id of %q = %q, want 36 stable hex digits", id, got)
		}
	}
	if insertID("a/b") == insertID("a/c") {
		t.Error("two ids share an insert id")
	}
}

// TestPartialImport: a 400 with failed_records imported the others: only the listed
// events are rejected, nothing is sent again.
func TestPartialImport(t *testing.T) {
	srv := apitest.New(t, newFake().handle)
	d := build(t, cfgFor(srv.URL, options()))
	var msgs []mapper.Message
	for i := range 10 {
		msgs = append(msgs, destinationstest.NewMessage("track", fmt.Sprintf("p%d", i), fmt.Sprintf("u-p-%d", i), `{"n":1}`, "2024-01-02T03:04:05Z"))
	}
	srv.RefuseUsers(msgs[3].UserID, msgs[8].UserID)
	err := d.Write(context.Background(), msgs)
	var be *destinations.BatchError
	if !errors.As(err, &be) || len(be.Failed) != 2 || be.Failed[0].Index != 3 || be.Failed[1].Index != 8 {
		t.Fatalf("Write = %v, want messages 3 and 8 refused", err)
	}
	if !strings.Contains(be.Failed[0].Err.Error(), "distinct_id") {
		t.Errorf("refusal %v", be.Failed[0].Err)
	}
	if n, r := len(srv.Requests()), len(srv.Received()); n != 1 || r != 8 {
		t.Errorf("%d requests, %d received; want 1 and 8", n, r)
	}
}

// TestThrottled: a 429 is retried; Retry-After is honoured when sent (Mixpanel documents
// none, so the backoff is otherwise the destination's own).
func TestThrottled(t *testing.T) {
	srv := apitest.New(t, newFake().handle)
	srv.Throttle(apitest.Answer{Status: 429, Header: http.Header{"Retry-After": {"1"}},
		Body: `{"code":429,"error":"Project exceeded rate limits. Please retry the request with exponential backoff.","status":"Too Many Requests"}`},
		apitest.Answer{Status: 429, Body: `{"code":429,"status":"Too Many Requests"}`})
	cfg := cfgFor(srv.URL, options())
	cfg.Retry.MaxBackoff = 150 * time.Millisecond
	start := time.Now()
	msgs := destinationstest.Messages("thr", 6)
	if err := build(t, cfg).Write(context.Background(), msgs); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el < 150*time.Millisecond {
		t.Errorf("done after %s: the Retry-After (capped at 150ms) was not honoured", el)
	}
	if n := len(srv.Received()); n != 6 {
		t.Errorf("%d of 6 received", n)
	}
}

// TestCredentialsRefused: a 401 from /import and a refused token on /engage fail the
// batch as a whole, without splitting; Check sees the 401.
func TestCredentialsRefused(t *testing.T) {
	srv := apitest.New(t, newFake().handle)
	o := options()
	o.ServiceAccountUsername, o.ServiceAccountSecret, o.ProjectID = saUser, "wrong", project
	d := build(t, cfgFor(srv.URL, o))
	err := d.Write(context.Background(), destinationstest.Messages("auth", 9))
	var pe *destinations.PermanentError
	if !errors.As(err, &pe) || pe.Status != 401 || len(srv.Requests()) != 1 {
		t.Errorf("Write = %v after %d requests, want one 401", err, len(srv.Requests()))
	}
	if err := d.(destinations.Checker).Check(context.Background()); err == nil || strings.Contains(err.Error(), "wrong") {
		t.Errorf("Check = %v, want the credentials refused, without the secret", err)
	}

	srv = apitest.New(t, newFake().handle)
	o = options()
	o.ProjectToken = "other"
	o.APISecret = token // /import accepts it; /engage refuses the token
	d = build(t, cfgFor(srv.URL, o))
	var ids []mapper.Message
	for i := range 6 {
		ids = append(ids, destinationstest.NewMessage("identify", fmt.Sprintf("i%d", i), fmt.Sprintf("u-i-%d", i), `{}`, ""))
	}
	err = d.Write(context.Background(), ids)
	if !errors.As(err, &pe) || destinations.Splittable(pe) || len(srv.Requests()) != 1 {
		t.Errorf("Write = %v after %d requests, want one unsplittable refusal", err, len(srv.Requests()))
	}
	if err := d.(destinations.Checker).Check(context.Background()); err != nil {
		t.Errorf("Check with good /import credentials: %v", err)
	}
}

// TestSizeLimits: requests within 2,000 items whatever batch_size says; an event over
// 1 MB rejected without being sent; a 413 bisected.
func TestSizeLimits(t *testing.T) {
	srv := apitest.New(t, newFake().handle)
	cfg := cfgFor(srv.URL, options())
	cfg.BatchSize = 9000
	cfg.Timeout = time.Minute // one Write, several requests
	d := build(t, cfg)
	msgs := destinationstest.Messages("count", 6100) // 2034 tracks, 2034 identify, 2033 groups
	big := destinationstest.LargeMessages("big", 2, 1_100_000)
	msgs = append(msgs, big...)
	err := d.Write(context.Background(), msgs)
	var be *destinations.BatchError
	if !errors.As(err, &be) || len(be.Failed) != 2 || be.Failed[0].Index != 6100 || !strings.Contains(be.Failed[0].Err.Error(), "over its limit") {
		t.Fatalf("Write = %v, want the two 1.1 MB messages refused", err)
	}
	for _, r := range srv.Requests() {
		var items []json.RawMessage
		json.Unmarshal(r.Body, &items)
		if r.Status != 200 || len(items) > 2000 {
			t.Errorf("a request to %s of %d items answered %d", r.Path, len(items), r.Status)
		}
	}
	if n := len(srv.Received()); n != 6100 {
		t.Errorf("%d of 6100 received", n)
	}

	limited := apitest.New(t, func(s *apitest.Server, r *http.Request, b []byte) apitest.Answer {
		if len(b) > 300_000 {
			return apitest.Answer{Status: 413, Body: `{"code":413,"error":"request too large"}`}
		}
		return newFake().handle(s, r, b)
	})
	var large []mapper.Message
	for i := range 8 {
		large = append(large, destinationstest.NewMessage("track", fmt.Sprintf("l%d", i), "u", `{"pad":"`+strings.Repeat("p", 100_000)+`"}`, "2024-01-01T00:00:00Z"))
	}
	if err := build(t, cfgFor(limited.URL, options())).Write(context.Background(), large); err != nil {
		t.Fatal(err)
	}
	if n := len(limited.Received()); n != 8 {
		t.Errorf("%d of 8 received after 413s", n)
	}
}

func FuzzParseImportError(f *testing.F) {
	f.Add([]byte(`{"code":400,"error":"some data points in the request failed validation","num_records_imported":1,"failed_records":[{"index":0,"insert_id":"x","field":"properties.time","message":"bad"},{"index":7},{"index":-1},{"index":0}]}`), 3)
	f.Add([]byte(`{"failed_records":[{"index":"1"}]}`), 2)
	f.Add([]byte(`[]`), 0)
	f.Fuzz(func(t *testing.T, b []byte, n int) {
		n = n % 3000
		failed := mixpanel.ParseImportError(b, n)
		for k, x := range failed {
			if x.Index < 0 || x.Index >= n || x.Err == nil || destinations.IsRetryable(x.Err) || (k > 0 && failed[k-1].Index >= x.Index) {
				t.Fatalf("failure %d: %+v of a request of %d", k, x, n)
			}
		}
	})
}

func FuzzParseUpdateAnswer(f *testing.F) {
	for _, s := range []string{`{"status":1,"error":null}`, `{"status":0,"error":"Invalid project token"}`, "1", "0", " 1\n", `{"status":"1"}`, `<html>`, ``} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		err := mixpanel.ParseUpdateAnswer(b)
		var pe *destinations.PermanentError
		if err != nil && !errors.As(err, &pe) {
			t.Fatalf("%q: %v is not a PermanentError", b, err)
		}
	})
}
