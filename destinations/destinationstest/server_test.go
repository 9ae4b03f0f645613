package destinationstest

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"net/http"
	"testing"
	"time"
)

func post(t *testing.T, url, key string, body []byte, gz bool) (*http.Response, error) {
	t.Helper()
	if gz {
		var buf bytes.Buffer
		zw := gzip.NewWriter(&buf)
		zw.Write(body)
		zw.Close()
		body = buf.Bytes()
	}
	req, _ := http.NewRequest(http.MethodPost, url+"/v1/batch", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if gz {
		req.Header.Set("Content-Encoding", "gzip")
	}
	if key != "" {
		req.SetBasicAuth(key, "")
	}
	resp, err := http.DefaultClient.Do(req)
	if err == nil {
		resp.Body.Close()
	}
	return resp, err
}

func batchOf(msgs ...[]byte) []byte {
	return append(append([]byte(`{"batch":[`), bytes.Join(msgs, []byte(","))...), "]}"...)
}

func TestSegmentServer(t *testing.T) {
	srv := NewSegmentServer(t, SegmentServerOptions{WriteKey: "k"})
	msgs := Messages("srv", 3)
	body := batchOf(msgs[0].JSON, msgs[1].JSON)

	if resp, err := post(t, srv.URL, "wrong", body, false); err != nil || resp.StatusCode != 401 {
		t.Errorf("wrong key: %v %v", resp, err)
	}
	if resp, err := post(t, srv.URL, "k", body, true); err != nil || resp.StatusCode != 200 {
		t.Fatalf("gzip batch: %v %v", resp, err)
	}
	if resp, err := post(t, srv.URL, "k", batchOf(msgs[0].JSON), false); err != nil || resp.StatusCode != 200 {
		t.Fatalf("plain batch: %v %v", resp, err)
	}
	if srv.Count(msgs[0].ID) != 2 || srv.Count(msgs[1].ID) != 1 || srv.Count(msgs[2].ID) != 0 {
		t.Errorf("counts %v", srv.Counts())
	}
	if got := srv.Received(); len(got) != 3 || !bytes.Equal(got[0].JSON, msgs[0].JSON) || got[0].UserID != msgs[0].UserID {
		t.Errorf("received %+v", got)
	}
	if b := srv.Batches(); len(b) != 3 || b[0].Status != 401 || !b[1].Gzip || len(b[1].IDs) != 2 || b[2].Bytes != len(batchOf(msgs[0].JSON)) {
		t.Errorf("batches %+v", b)
	}

	srv.RefuseUsers(msgs[2].UserID)
	if resp, _ := post(t, srv.URL, "k", batchOf(msgs[1].JSON, msgs[2].JSON), false); resp == nil || resp.StatusCode != 400 {
		t.Errorf("poison batch answered %v", resp)
	}
	srv.FailNext(1)
	if resp, _ := post(t, srv.URL, "k", body, false); resp == nil || resp.StatusCode != 500 {
		t.Errorf("FailNext answered %v", resp)
	}
	if resp, _ := post(t, srv.URL, "k", []byte(`{"batch":[]}`), false); resp == nil || resp.StatusCode != 200 {
		t.Errorf("empty batch answered %v", resp)
	}
	if srv.Count(msgs[1].ID) != 1 {
		t.Error("a refused or failed batch was recorded")
	}

	arrived, release := srv.Stall()
	done := make(chan *http.Response, 1)
	go func() {
		resp, _ := post(t, srv.URL, "k", body, false)
		done <- resp
	}()
	<-arrived
	select {
	case <-done:
		t.Fatal("a stalled request was answered")
	default:
	}
	release()
	if resp := <-done; resp == nil || resp.StatusCode != 200 {
		t.Errorf("released request answered %v", resp)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.WaitBatches(ctx, len(srv.Batches())); err != nil {
		t.Error(err)
	}
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if err := srv.WaitBatches(ctx, 1000); err == nil {
		t.Error("WaitBatches for requests that never come returned nil")
	}
}

func TestSegmentServerFaults(t *testing.T) {
	body := batchOf(Messages("f", 1)[0].JSON)
	srv := NewSegmentServer(t, SegmentServerOptions{Fail429: 1, RetryAfter: "2"})
	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/v1/batch", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "2" {
		t.Errorf("429 fault: %v %v", resp, err)
	}
	srv = NewSegmentServer(t, SegmentServerOptions{Drop: 1})
	if _, err := post(t, srv.URL, "", body, false); err == nil {
		t.Error("a dropped connection answered")
	}
	// The same seed gives the same faults to the same sequence of requests.
	pattern := func() []int {
		srv := NewSegmentServer(t, SegmentServerOptions{Seed: 3, Fail500: 0.5})
		var out []int
		for range 20 {
			resp, _ := post(t, srv.URL, "", body, false)
			out = append(out, resp.StatusCode)
		}
		return out
	}
	a, b := pattern(), pattern()
	fails := 0
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("seeded faults differ: %v vs %v", a, b)
		}
		if a[i] == 500 {
			fails++
		}
	}
	if fails == 0 || fails == 20 {
		t.Errorf("%d of 20 requests failed with Fail500 0.5", fails)
	}
}

func TestMessages(t *testing.T) {
	msgs := LargeMessages("gen", 30, 2000)
	seen := map[string]bool{}
	for _, m := range msgs {
		if !json.Valid(m.JSON) || !json.Valid(m.Body()) || m.Body()[0] != '{' {
			t.Fatalf("message %s: invalid JSON %s", m.ID, m.JSON)
		}
		if seen[m.ID] {
			t.Errorf("id %s twice", m.ID)
		}
		seen[m.ID] = true
		if _, err := time.Parse(time.RFC3339Nano, m.Timestamp()); err != nil {
			t.Errorf("message %s: timestamp %q", m.ID, m.Timestamp())
		}
		if len(m.JSON) < 2000 {
			t.Errorf("message %s: %d bytes, want at least the padding", m.ID, len(m.JSON))
		}
		CheckSame(t, m, m.JSON)
	}
}
