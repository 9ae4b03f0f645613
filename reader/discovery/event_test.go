package discovery

import (
	"encoding/json"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func readSample(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustTime(s string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		panic(err)
	}
	return t
}

// TestParseSamples parses notifications shaped as AWS documents them.
func TestParseSamples(t *testing.T) {
	put := Event{Bucket: "amzn-s3-demo-bucket", Key: "exports/users/dt=2025-01-01/part 0.parquet", Size: 1024,
		ETag: "d41d8cd98f00b204e9800998ecf8427e", VersionID: "096fKKXTRTtl3on89fVO.nfljtsv6qko", Time: mustTime("1970-01-01T00:00:00Z")}
	removed := Event{Bucket: "amzn-s3-demo-bucket", Key: "exports/users/old.parquet", VersionID: "1QW9g1Z99LUNbvaaYVpW9xDlOLU.qxgF",
		Removed: true, Time: mustTime("2025-01-02T03:04:05.678Z")}
	cases := []struct {
		file string
		want []Event
	}{
		// The tagging record of the sample gives no event: the object did not change.
		{"s3-put.json", []Event{put, removed}},
		{"sns-s3-put.json", []Event{put}},
		{"s3-test-event.json", nil},
		{"sns-s3-test-event.json", nil},
		{"eventbridge-created.json", []Event{{Bucket: "amzn-s3-demo-bucket1", Key: "exports/users/dt=2025-01-01/part 0.parquet", Size: 5,
			ETag: "b1946ac92492d2347c6235b4d2611184", VersionID: "IYV3p45BT0ac8hjHg1houSdS1a.Mro8e", Time: mustTime("2021-11-12T00:00:00Z")}}},
		{"eventbridge-deleted.json", []Event{{Bucket: "amzn-s3-demo-bucket1", Key: "exports/users/old.parquet",
			ETag: "d41d8cd98f00b204e9800998ecf8427e", VersionID: "1QW9g1Z99LUNbvaaYVpW9xDlOLU.qxgF", Removed: true, Time: mustTime("2021-11-12T00:00:00Z")}}},
		{"eventbridge-restore.json", nil},
	}
	for _, c := range cases {
		t.Run(c.file, func(t *testing.T) {
			got, err := Parse(readSample(t, c.file))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, c.want) {
				t.Fatalf("got  %+v\nwant %+v", got, c.want)
			}
		})
	}
}

func TestParseKeyEncoding(t *testing.T) {
	for raw, want := range map[string]string{
		"a+b.parquet":            "a b.parquet",
		"a%2Bb.parquet":          "a+b.parquet",
		"dt%3D2025%2F01/x.parq":  "dt=2025/01/x.parq",
		"caf%C3%A9/%E2%9C%93.pq": "café/✓.pq",
	} {
		body := `{"Records":[{"eventSource":"aws:s3","eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{"key":"` + raw + `","size":1}}}]}`
		evs, err := Parse([]byte(body))
		if err != nil {
			t.Fatalf("%s: %v", raw, err)
		}
		if len(evs) != 1 || evs[0].Key != want {
			t.Errorf("%s: %+v, want key %q", raw, evs, want)
		}
	}
}

func TestParseMalformed(t *testing.T) {
	cases := map[string]string{
		"":              "empty body",
		"   ":           "empty body",
		"hello":         "not a JSON object",
		"[1]":           "not a JSON object",
		"{":             "invalid JSON",
		`{"a":1}`:       "neither an S3 notification",
		`{"Records":1}`: "invalid JSON",
		`{"Records":[{"eventName":"ObjectCreated:Put"}]}`: "Records[0]: no s3",
		`{"Records":[{}]}`: "Records[0]: no eventName",
		`{"Records":[{"eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{}}}]}`:                                  "Records[0]: no s3.object.key",
		`{"Records":[{"eventName":"ObjectCreated:Put","s3":{"bucket":{},"object":{"key":"k"}}}]}`:                                   "Records[0]: no s3.bucket.name",
		`{"Records":[{"eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{"key":"%zz"}}}]}`:                       "is not URL-encoded",
		`{"Records":[{"eventName":"ObjectCreated:Put","eventTime":"yesterday","s3":{"bucket":{"name":"b"},"object":{"key":"k"}}}]}`: "eventTime",
		`{"Records":[{"eventName":"ObjectCreated:Put","eventSource":"aws:sqs","s3":{"bucket":{"name":"b"},"object":{"key":"k"}}}]}`: "is not aws:s3",
		`{"Records":[{"eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{"key":"k","size":-1}}}]}`:               "negative",
		`{"Type":"Notification","TopicArn":"arn"}`:                                                                                  "without a Message",
		`{"Type":"Notification","Message":"not json"}`:                                                                              "SNS Message: not a JSON object",
		`{"Type":"Notification","Message":"{\"Type\":\"Notification\",\"Message\":\"{}\"}"}`:                                        "an SNS envelope inside an SNS envelope",
		`{"Type":"SubscriptionConfirmation","TopicArn":"arn:aws:sns:us-east-1:1:t","Message":"confirm"}`:                            "confirm the queue's subscription",
		`{"detail-type":"Object Created","source":"aws.s3"}`:                                                                        "without detail",
		`{"detail-type":"Object Created","source":"aws.s3","detail":{"bucket":{"name":"b"},"object":{}}}`:                           "no detail.object.key",
		`{"detail-type":"Object Created","source":"aws.ec2","detail":{}}`:                                                           "is not aws.s3",
		`{"detail-type":"Object Created","detail":{"bucket":{"name":"b"},"object":{"key":"k"}},"time":"x"}`:                         "time",
		`{"detail-type":"","detail":{}}`: "empty detail-type",
	}
	for body, want := range cases {
		evs, err := Parse([]byte(body))
		if err == nil {
			t.Errorf("%s: no error, events %+v", body, evs)
			continue
		}
		if !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v does not wrap ErrMalformed", body, err)
		}
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %q, want it to contain %q", body, err, want)
		}
		if evs != nil {
			t.Errorf("%s: events %+v with an error", body, evs)
		}
	}
}

// The encoders below write events the way each sender does; the fuzz targets and the
// queue tests use them.

func s3RecordOf(e Event) map[string]any {
	name := "ObjectCreated:Put"
	obj := map[string]any{"key": url.QueryEscape(e.Key), "sequencer": "0055AED6DCD90281E5"}
	if e.Removed {
		name = "ObjectRemoved:Delete"
	} else {
		obj["size"] = e.Size
		obj["eTag"] = e.ETag
	}
	if e.VersionID != "" {
		obj["versionId"] = e.VersionID
	}
	r := map[string]any{
		"eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1", "eventName": name,
		"s3": map[string]any{"s3SchemaVersion": "1.0", "bucket": map[string]any{"name": e.Bucket, "arn": "arn:aws:s3:::" + e.Bucket}, "object": obj},
	}
	if !e.Time.IsZero() {
		r["eventTime"] = e.Time.UTC().Format("2006-01-02T15:04:05.000Z")
	}
	return r
}

func s3Body(evs ...Event) string {
	recs := make([]any, len(evs))
	for i, e := range evs {
		recs[i] = s3RecordOf(e)
	}
	return mustJSON(map[string]any{"Records": recs})
}

func snsBody(inner string) string {
	return mustJSON(map[string]any{
		"Type": "Notification", "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
		"TopicArn": "arn:aws:sns:us-east-1:123456789012:exports", "Subject": "Amazon S3 Notification",
		"Message": inner, "Timestamp": "2025-01-02T03:04:07.123Z", "SignatureVersion": "1",
	})
}

func bridgeBody(e Event) string {
	dt := "Object Created"
	obj := map[string]any{"key": e.Key, "etag": e.ETag, "sequencer": "617f08299329d189"}
	if e.Removed {
		dt = "Object Deleted"
	} else {
		obj["size"] = e.Size
	}
	if e.VersionID != "" {
		obj["version-id"] = e.VersionID
	}
	b := map[string]any{
		"version": "0", "id": "17793124-05d4-b198-2fde-7ededc63b103", "detail-type": dt, "source": "aws.s3",
		"account": "123456789012", "region": "us-east-1", "resources": []string{"arn:aws:s3:::" + e.Bucket},
		"detail": map[string]any{"version": "0", "bucket": map[string]any{"name": e.Bucket}, "object": obj, "reason": "PutObject"},
	}
	if !e.Time.IsZero() {
		b["time"] = e.Time.UTC().Format(time.RFC3339)
	}
	return mustJSON(b)
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// sameEvents compares events, times by instant.
func sameEvents(a, b []Event) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := a[i], b[i]
		if !x.Time.Equal(y.Time) {
			return false
		}
		x.Time, y.Time = time.Time{}, time.Time{}
		if x != y {
			return false
		}
	}
	return true
}

// FuzzParse checks that Parse never panics, that every error wraps ErrMalformed, and
// that the events of any body it accepts come back unchanged when written again as S3,
// SNS and EventBridge would.
func FuzzParse(f *testing.F) {
	for _, name := range []string{"s3-put.json", "sns-s3-put.json", "s3-test-event.json", "eventbridge-created.json", "eventbridge-deleted.json"} {
		f.Add(readSample(f, name))
	}
	f.Add([]byte(`{"Records":[]}`))
	f.Add([]byte(`{"Type":"Notification","Message":"{\"Records\":[]}"}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		evs, err := Parse(body)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		for _, e := range evs {
			// Events without a time or with one below milliseconds are written as the
			// sender would, so compare at S3's precision.
			e.Time = e.Time.Truncate(time.Second)
			if e.Time.Year() < 0 || e.Time.Year() > 9999 {
				continue
			}
			// A key decoded from %FF is no valid UTF-8: JSON (EventBridge's unencoded
			// key) cannot carry it, and S3 keys are UTF-8.
			if !utf8.ValidString(e.Key + e.Bucket + e.ETag + e.VersionID) {
				continue
			}
			checkRoundTrip(t, e)
		}
	})
}

// FuzzRoundTrip writes an event in each shape and checks that Parse gives it back.
func FuzzRoundTrip(f *testing.F) {
	f.Add("amzn-s3-demo-bucket", "exports/users/dt=2025-01-01/part 0.parquet", int64(1024), "d41d8cd98f00b204e9800998ecf8427e", "096fKKXTRTtl3on89fVO", false, int64(1700000000))
	f.Add("b", "a+b%2F/ü.parquet", int64(0), "", "", true, int64(0))
	f.Fuzz(func(t *testing.T, bucket, key string, size int64, etag, version string, removed bool, unix int64) {
		if bucket == "" || key == "" || size < 0 || unix < 0 || unix > 253402300799 {
			return
		}
		e := Event{Bucket: bucket, Key: key, Size: size, ETag: strings.Trim(etag, `"`), VersionID: version, Removed: removed}
		if unix > 0 {
			e.Time = time.Unix(unix, 0).UTC()
		}
		// JSON cannot carry invalid UTF-8 unchanged: such strings are no S3 key or name.
		if !utf8.ValidString(key + bucket + etag + version) {
			return
		}
		checkRoundTrip(t, e)
	})
}

func checkRoundTrip(t *testing.T, e Event) {
	t.Helper()
	if e.Removed {
		e.Size = 0
	}
	bridge := e
	if e.Removed {
		e.ETag = "" // S3's removal records carry no eTag; EventBridge's do
	}
	for _, c := range []struct {
		shape, body string
		want        Event
	}{
		{"s3", s3Body(e), e},
		{"sns", snsBody(s3Body(e)), e},
		{"eventbridge", bridgeBody(bridge), bridge},
	} {
		got, err := Parse([]byte(c.body))
		if err != nil {
			t.Fatalf("%s: %v\nbody %s", c.shape, err, c.body)
		}
		if !sameEvents(got, []Event{c.want}) {
			t.Fatalf("%s: got %+v, want %+v\nbody %s", c.shape, got, c.want, c.body)
		}
	}
}
