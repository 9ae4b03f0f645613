package config_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/destinations/all"
	"github.com/backflowhq/backflow/internal/keytemplate"
)

type kv struct {
	path string
	v    any
}

const (
	d0 = "syncs[0].destinations[0]"
	d1 = "syncs[0].destinations[1]"
	mp = "syncs[0].mapping"
	sp = "syncs[0].source"

	sqsQueue = "https://sqs.us-east-1.amazonaws.com/123456789012/exports"
)

func TestValidationErrors(t *testing.T) {
	types := strings.Join(all.Registry().Types(), ", ")
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "a-file"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	webhook := func() map[string]any { return map[string]any{"type": "webhook", "url": "https://hooks.example.com/x"} }
	s3dest := func() map[string]any {
		return map[string]any{"type": "s3", "url": "s3://lake/backflow/"}
	}

	tests := []struct {
		name      string
		muts      []kv
		path, msg string
		n         int // how many problems are expected; 0 means 1
	}{
		// Syncs.
		{"no syncs", []kv{{"syncs", removed{}}}, "syncs", "at least one sync is required", 0},
		{"empty syncs", []kv{{"syncs", []any{}}}, "syncs", "at least one sync is required", 0},
		{"sync name missing", []kv{{"syncs[0].name", removed{}}}, "syncs[0].name", "is required", 0},
		{"sync name pattern", []kv{{"syncs[0].name", "Users"}}, "syncs[0].name", `"Users" may only contain a-z, 0-9, _ and -`, 0},
		{"sync name unique", []kv{{"syncs[1]", baseTree()["syncs"].([]any)[0]}}, "syncs[1].name", `"users" is already the name of syncs[0]`, 0},

		// Source.
		{"source url missing", []kv{{sp + ".url", removed{}}}, sp + ".url", "is required", 0},
		{"source url no bucket", []kv{{sp + ".url", "s3://"}}, sp + ".url", "the bucket is missing", 0},
		{"source url empty bucket", []kv{{sp + ".url", "s3:///users"}}, sp + ".url", "the bucket is missing", 0},
		{"source url scheme", []kv{{sp + ".url", "gs://b/p"}}, sp + ".url", "must be s3://bucket/prefix, a local directory or a file:// URL", 0},
		{"source dir missing", []kv{{sp + ".url", "nope"}}, sp + ".url", "local directory " + filepath.Join(dir, "nope") + " does not exist", 0},
		{"source dir is a file", []kv{{sp + ".url", "a-file"}}, sp + ".url", "is not a directory", 0},
		{"include bad glob", []kv{{sp + ".include", "[a-"}}, sp + ".include", `"[a-" is not a valid glob pattern`, 0},
		// the reader refuses it, so the config does too (one parser for both).
		{"include empty segment", []kv{{sp + ".include", "data//x.parquet"}}, sp + ".include", "empty path segment", 0},
		{"partition", []kv{{sp + ".partition", "newest"}}, sp + ".partition", `"newest" is not one of all, latest`, 0},
		{"auth mode", []kv{{sp + ".auth.mode", "magic"}}, sp + ".auth.mode", `"magic" is not one of default, keys, role`, 0},
		{"auth keys needs key id", []kv{{sp + ".auth.mode", "keys"}, {sp + ".auth.secret_access_key", "secret-key-1"}}, sp + ".auth.access_key_id", "is required for auth mode keys", 0},
		{"auth keys needs secret", []kv{{sp + ".auth.mode", "keys"}, {sp + ".auth.access_key_id", "AK"}}, sp + ".auth.secret_access_key", "is required for auth mode keys", 0},
		{"auth role needs arn", []kv{{sp + ".auth.mode", "role"}}, sp + ".auth.role_arn", "is required for auth mode role", 0},
		{"auth role arn shape", []kv{{sp + ".auth.mode", "role"}, {sp + ".auth.role_arn", "arn:aws:iam::123:role/x"}}, sp + ".auth.role_arn", "must look like arn:aws:iam::123456789012:role/NAME", 0},
		{"auth role arn not a role", []kv{{sp + ".auth.mode", "role"}, {sp + ".auth.role_arn", "arn:aws:iam::123456789012:user/x"}}, sp + ".auth.role_arn", "must look like", 0},
		{"auth default with keys", []kv{{sp + ".auth.access_key_id", "AK"}}, sp + ".auth.access_key_id", "not used by auth mode default", 0},
		{"auth keys with role", []kv{{sp + ".auth.mode", "keys"}, {sp + ".auth.access_key_id", "AK"}, {sp + ".auth.secret_access_key", "secret-key-1"}, {sp + ".auth.role_arn", "arn:aws:iam::123456789012:role/x"}}, sp + ".auth.role_arn", "not used by auth mode keys", 0},
		{"auth role with secret", []kv{{sp + ".auth.mode", "role"}, {sp + ".auth.role_arn", "arn:aws:iam::123456789012:role/x"}, {sp + ".auth.secret_access_key", "hunter2-secret"}}, sp + ".auth.secret_access_key", "not used by auth mode role", 0},
		{"local source with region", []kv{{sp + ".url", "."}, {sp + ".region", "eu-west-1"}}, sp + ".region", "used only by an s3:// source", 0},
		{"local source with auth", []kv{{sp + ".url", "."}, {sp + ".auth.mode", "default"}}, sp + ".auth", "used only by an s3:// source", 0},
		{"source endpoint", []kv{{sp + ".endpoint", "ftp://x"}}, sp + ".endpoint", "must be an http:// or https:// URL", 0},
		{"max_row_group_bytes", []kv{{sp + ".limits.max_row_group_bytes", 0}}, sp + ".limits.max_row_group_bytes", "must be greater than 0", 0},
		{"max_record_bytes", []kv{{sp + ".limits.max_record_bytes", -1}}, sp + ".limits.max_record_bytes", "must be greater than 0", 0},

		// Discovery.
		{"discovery type", []kv{{sp + ".discovery.type", "sns"}}, sp + ".discovery.type", `"sns" is not one of list, sqs`, 0},
		{"sqs needs queue_url", []kv{{sp + ".discovery.type", "sqs"}}, sp + ".discovery.queue_url", "is required for discovery type sqs", 0},
		{"sqs queue_url scheme", []kv{{sp + ".discovery", map[string]any{"type": "sqs", "queue_url": "sqs://exports"}}}, sp + ".discovery.queue_url", "must be an http:// or https:// URL", 0},
		{"sqs queue_url name only", []kv{{sp + ".discovery", map[string]any{"type": "sqs", "queue_url": "exports"}}}, sp + ".discovery.queue_url", "must be an http:// or https:// URL", 0},
		{"sqs endpoint", []kv{{sp + ".discovery", map[string]any{"type": "sqs", "queue_url": sqsQueue, "endpoint": "127.0.0.1:9324"}}}, sp + ".discovery.endpoint", "must be an http:// or https:// URL", 0},
		{"sqs reconcile short", []kv{{sp + ".discovery", map[string]any{"type": "sqs", "queue_url": sqsQueue, "reconcile": "30s"}}}, sp + ".discovery.reconcile", "30s is too short: at least 1m0s", 0},
		{"sqs reconcile negative", []kv{{sp + ".discovery", map[string]any{"type": "sqs", "queue_url": sqsQueue, "reconcile": "-1h"}}}, sp + ".discovery.reconcile", "must be a positive duration", 0},
		{"sqs on a local source", []kv{{sp + ".url", "."}, {sp + ".discovery", map[string]any{"type": "sqs", "queue_url": sqsQueue}}}, sp + ".discovery.type", "sqs needs an s3:// source url", 0},
		{"list with queue_url", []kv{{sp + ".discovery.queue_url", sqsQueue}}, sp + ".discovery.queue_url", "used only by discovery type sqs", 0},
		{"list with reconcile", []kv{{sp + ".discovery", map[string]any{"type": "list", "reconcile": "1h"}}}, sp + ".discovery.reconcile", "used only by discovery type sqs", 0},
		{"discovery unknown key", []kv{{sp + ".discovery", map[string]any{"type": "sqs", "queue": sqsQueue}}}, sp + ".discovery.queue", "unknown key", 2},

		// Mapping.
		{"mapping type missing", []kv{{mp + ".type", removed{}}}, mp + ".type", "is required: one of identify, track, group", 0},
		{"mapping type", []kv{{mp + ".type", "page"}}, mp + ".type", `"page" is not one of identify, track, group`, 0},
		{"no identifier", []kv{{mp + ".user_id", removed{}}}, mp, "needs user_id, anonymous_id or both", 0},
		{"group needs group_id", []kv{{mp + ".type", "group"}}, mp + ".group_id", "is required for type group", 0},
		{"group_id only for group", []kv{{mp + ".group_id", "company"}}, mp + ".group_id", "only used by type group", 0},
		{"track needs event", []kv{{mp + ".type", "track"}}, mp, "type track needs event (a constant name) or event_column", 0},
		{"track not both", []kv{{mp + ".type", "track"}, {mp + ".event", "E"}, {mp + ".event_column", "e"}}, mp + ".event_column", "set event or event_column, not both", 0},
		{"event only for track", []kv{{mp + ".event", "E"}}, mp + ".event", "only used by type track", 0},
		{"event_column only for track", []kv{{mp + ".type", "group"}, {mp + ".group_id", "g"}, {mp + ".event_column", "e"}}, mp + ".event_column", "only used by type track", 0},
		{"identifier twice", []kv{{mp + ".anonymous_id", "customer_id"}}, mp + ".anonymous_id", `column "customer_id" is already used by user_id`, 0},
		{"group identifier twice", []kv{{mp + ".type", "group"}, {mp + ".group_id", "customer_id"}}, mp + ".group_id", `column "customer_id" is already used by user_id`, 0},
		{"empty column", []kv{{mp + ".columns", []any{"a", ""}}}, mp + ".columns[1]", "must not be empty", 0},
		{"column twice", []kv{{mp + ".columns", []any{"a", "a"}}}, mp + ".columns[1]", `column "a" is listed twice`, 0},
		{"rename empty target", []kv{{mp + ".rename", map[string]any{"city": ""}}}, mp + ".rename.city", "must not be empty", 0},
		{"rename empty segment", []kv{{mp + ".rename", map[string]any{"city": "address..city"}}}, mp + ".rename.city", `"address..city" has an empty segment`, 0},
		{"rename leading dot", []kv{{mp + ".rename", map[string]any{"city": ".city"}}}, mp + ".rename.city", "has an empty segment", 0},
		{"rename trailing dot", []kv{{mp + ".rename", map[string]any{"city": "city."}}}, mp + ".rename.city", "has an empty segment", 0},
		{"rename same target", []kv{{mp + ".rename", map[string]any{"a": "x", "b": "x"}}}, mp + ".rename.b", `output key "x" is also written by syncs[0].mapping.rename.a`, 0},
		{"rename parent and child", []kv{{mp + ".rename", map[string]any{"a": "x.y", "b": "x"}}}, mp + ".rename.b", `output key "x" would replace the object holding "x.y" from syncs[0].mapping.rename.a`, 0},
		{"constant under a renamed value", []kv{{mp + ".rename", map[string]any{"a": "x"}}, {mp + ".constants", map[string]any{"x.y": 1}}}, mp + ".constants.x.y", `output key "x.y" would nest inside the value "x" from syncs[0].mapping.rename.a`, 0},
		{"constants parent and child", []kv{{mp + ".constants", map[string]any{"a": 1, "a.b": 2}}}, mp + ".constants.a.b", `would nest inside the value "a"`, 0},
		{"constant equals a listed column", []kv{{mp + ".columns", []any{"city"}}, {mp + ".constants", map[string]any{"city": "Oslo"}}}, mp + ".columns[0]", `output key "city" is also written by syncs[0].mapping.constants.city`, 0},
		{"constant key empty segment", []kv{{mp + ".constants", map[string]any{"a..b": 1}}}, mp + ".constants.a..b", `the key "a..b" has an empty segment`, 0},
		{"rename of an unlisted column", []kv{{mp + ".columns", []any{"email"}}, {mp + ".rename", map[string]any{"city": "address.city"}}}, mp + ".rename.city", `renames column "city", which is not listed in columns`, 0},

		// Mode and schedule.
		{"mode", []kv{{"syncs[0].mode", "sometimes"}}, "syncs[0].mode", `"sometimes" is not one of incremental, full, diff`, 0},
		{"every and cron", []kv{{"syncs[0].schedule.every", "1h"}, {"syncs[0].schedule.cron", "0 * * * *"}}, "syncs[0].schedule", "set every or cron, not both", 0},
		{"every too short", []kv{{"syncs[0].schedule.every", "500ms"}}, "syncs[0].schedule.every", "must be at least 1s", 0},
		{"every zero", []kv{{"syncs[0].schedule.every", "0s"}}, "syncs[0].schedule.every", "must be at least 1s", 0},
		{"every negative", []kv{{"syncs[0].schedule.every", "-1h"}}, "syncs[0].schedule.every", "must be at least 1s", 0},
		{"every not a duration", []kv{{"syncs[0].schedule.every", "1 hour"}}, "syncs[0].schedule.every", `must be a duration such as 30s, 5m or 1h, got "1 hour"`, 0},
		{"every a number", []kv{{"syncs[0].schedule.every", 3600}}, "syncs[0].schedule.every", "a bare number has no unit", 0},
		{"cron fields", []kv{{"syncs[0].schedule.cron", "* * *"}}, "syncs[0].schedule.cron", "is not a valid 5-field cron expression", 0},
		{"cron seconds field", []kv{{"syncs[0].schedule.cron", "0 0 * * * *"}}, "syncs[0].schedule.cron", "is not a valid 5-field cron expression", 0},
		{"cron time zone", []kv{{"syncs[0].schedule.cron", "CRON_TZ=Europe/Oslo 0 * * * *"}}, "syncs[0].schedule.cron", "time-zone prefixes are not supported", 0},
		// serve refuses these, so the config does too (one parser for both).
		{"cron every", []kv{{"syncs[0].schedule.cron", "@every 5m"}}, "syncs[0].schedule.cron", "use `every:` for intervals", 0},
		{"cron never fires", []kv{{"syncs[0].schedule.cron", "0 0 30 2 *"}}, "syncs[0].schedule.cron", "no time matches it", 0},
		{"start without every", []kv{{"syncs[0].schedule.start", "2025-01-01T00:00:00Z"}}, "syncs[0].schedule.start", "only used with every", 0},
		{"start not RFC 3339", []kv{{"syncs[0].schedule.every", "1h"}, {"syncs[0].schedule.start", "2025-01-01 00:00"}}, "syncs[0].schedule.start", `must be an RFC 3339 time such as 2025-01-01T00:00:00Z, got "2025-01-01 00:00"`, 0},

		// Destinations: shared keys.
		{"no destinations", []kv{{"syncs[0].destinations", []any{}}}, "syncs[0].destinations", "at least one destination is required", 0},
		{"destination type missing", []kv{{d0 + ".type", removed{}}}, d0 + ".type", "is required: one of " + types, 0},
		{"destination type", []kv{{d0 + ".type", "pigeon"}}, d0 + ".type", `"pigeon" is not one of ` + types, 0},
		{"destination default names collide", []kv{{d1, map[string]any{"type": "stdout"}}}, d1 + ".name", `"stdout" is already the name of destinations[0]`, 0},
		{"destination name pattern", []kv{{d0 + ".name", "My Out"}}, d0 + ".name", `"My Out" may only contain a-z, 0-9, _ and -`, 0},
		{"max_in_flight", []kv{{d0 + ".max_in_flight", 0}}, d0 + ".max_in_flight", "must be at least 1", 0},
		{"rate_limit", []kv{{d0 + ".rate_limit", -1}}, d0 + ".rate_limit", "must be a number of requests per second, 0 or more", 0},
		{"retry.max_attempts", []kv{{d0 + ".retry.max_attempts", 0}}, d0 + ".retry.max_attempts", "must be at least 1", 0},
		{"retry.max_backoff", []kv{{d0 + ".retry.max_backoff", "0s"}}, d0 + ".retry.max_backoff", "must be a positive duration", 0},
		{"batch_size", []kv{{d0 + ".batch_size", 0}}, d0 + ".batch_size", "must be at least 1", 0},
		{"timeout", []kv{{d0 + ".timeout", "-5s"}}, d0 + ".timeout", "must be a positive duration", 0},

		// segment.
		{"segment write_key", []kv{{d0 + ".type", "segment"}}, d0 + ".write_key", "is required for type segment", 0},
		{"segment endpoint", []kv{{d0 + ".type", "segment"}, {d0 + ".write_key", "write-key-1"}, {d0 + ".endpoint", "api.segment.io"}}, d0 + ".endpoint", "must be an http:// or https:// URL", 0},
		{"segment with headers", []kv{{d0 + ".type", "segment"}, {d0 + ".write_key", "write-key-1"}, {d0 + ".headers", map[string]any{"X": "header-value"}}}, d0 + ".headers", "not used by type segment", 0},

		// webhook.
		{"webhook url missing", []kv{{d0 + ".type", "webhook"}}, d0 + ".url", "is required for type webhook", 0},
		{"webhook url scheme", []kv{{d0, map[string]any{"type": "webhook", "url": "ftp://x/y"}}}, d0 + ".url", "must be an http:// or https:// URL", 0},
		{"webhook url no host", []kv{{d0, map[string]any{"type": "webhook", "url": "https:///y"}}}, d0 + ".url", "must be an http:// or https:// URL", 0},
		{"webhook header name", []kv{{d0, webhook()}, {d0 + ".headers", map[string]any{"Bad Header": "header-value"}}}, d0 + ".headers.Bad Header", "is not a valid HTTP header name", 0},
		{"webhook header value", []kv{{d0, webhook()}, {d0 + ".headers", map[string]any{"X-Token": "a\r\nInjected: 1"}}}, d0 + ".headers.X-Token", "the value must not contain line breaks or NUL", 0},
		{"webhook status", []kv{{d0, webhook()}, {d0 + ".non_retryable_status", []any{404, 503}}}, d0 + ".non_retryable_status[1]", "503 is not a 4xx status code", 0},
		{"webhook with write_key", []kv{{d0, webhook()}, {d0 + ".write_key", "write-key-1"}}, d0 + ".write_key", "not used by type webhook", 0},

		// file and stdout.
		{"file path", []kv{{d0 + ".type", "file"}}, d0 + ".path", "is required for type file", 0},
		{"file path twice", []kv{{d0, map[string]any{"type": "file", "path": "out.jsonl"}}, {d1, map[string]any{"type": "file", "name": "again", "path": "./out.jsonl"}}}, d1 + ".path", "is also written by " + d0, 0},
		{"stdout with path", []kv{{d0 + ".path", "x"}}, d0 + ".path", "not used by type stdout", 0},
		{"stdout with gzip false", []kv{{d0 + ".gzip", false}}, d0 + ".gzip", "not used by type stdout", 0},

		// s3.
		{"s3 url missing", []kv{{d0 + ".type", "s3"}}, d0 + ".url", "is required for type s3", 0},
		{"s3 url scheme", []kv{{d0, s3dest()}, {d0 + ".url", "https://lake"}}, d0 + ".url", "must be s3://bucket/prefix", 0},
		{"s3 url bucket", []kv{{d0, s3dest()}, {d0 + ".url", "s3://"}}, d0 + ".url", "the bucket is missing", 0},
		{"s3 format", []kv{{d0, s3dest()}, {d0 + ".format", "avro"}}, d0 + ".format", `"avro" is not one of jsonl, csv, parquet`, 0},
		{"s3 compression", []kv{{d0, s3dest()}, {d0 + ".compression", "zstd"}}, d0 + ".compression", `"zstd" is not one of none, gzip`, 0},
		{"s3 parquet gzip", []kv{{d0, s3dest()}, {d0 + ".format", "parquet"}, {d0 + ".compression", "gzip"}}, d0 + ".compression", "gzip is not used with format parquet", 0},
		{"s3 csv with jsonl", []kv{{d0, s3dest()}, {d0 + ".csv", map[string]any{"quote_all": true}}}, d0 + ".csv", "only used by format csv", 0},
		{"s3 csv delimiter", []kv{{d0, s3dest()}, {d0 + ".format", "csv"}, {d0 + ".csv", map[string]any{"delimiter": ";"}}}, d0 + ".csv.delimiter", `";" is not one of ",", "|", "tab"`, 0},
		{"s3 max_object_rows", []kv{{d0, s3dest()}, {d0 + ".max_object_rows", 0}}, d0 + ".max_object_rows", "must be at least 1", 0},
		{"s3 endpoint", []kv{{d0, s3dest()}, {d0 + ".endpoint", "localhost:9000"}}, d0 + ".endpoint", "must be an http:// or https:// URL", 0},
		{"s3 auth", []kv{{d0, s3dest()}, {d0 + ".auth", map[string]any{"mode": "keys"}}}, d0 + ".auth.access_key_id", "is required for auth mode keys", 2},
		{"s3 with write_key", []kv{{d0, s3dest()}, {d0 + ".write_key", "write-key-1"}}, d0 + ".write_key", "not used by type s3", 0},

		// State and serve.
		{"state bucket", []kv{{"state.url", "s3://"}}, "state.url", "the bucket is missing", 0},
		{"state scheme", []kv{{"state.url", "gs://x"}}, "state.url", "must be a local directory or s3://bucket/prefix", 0},
		{"local state with region", []kv{{"state.region", "eu-west-1"}}, "state.region", "used only by s3:// state", 0},
		{"s3 state auth", []kv{{"state.url", "s3://b/state"}, {"state.auth.mode", "role"}}, "state.auth.role_arn", "is required for auth mode role", 0},
		{"serve runs", []kv{{"serve.max_concurrent_runs", 0}}, "serve.max_concurrent_runs", "must be at least 1", 0},
		{"serve history", []kv{{"serve.history", 0}}, "serve.history", "must be at least 1", 0},
		{"serve grace", []kv{{"serve.shutdown_grace", "0s"}}, "serve.shutdown_grace", "must be a positive duration", 0},
		{"serve token empty", []kv{{"serve.auth_token", ""}}, "serve.auth_token", "is empty", 0},
		{"serve token short", []kv{{"serve.auth_token", "hunter2-secret"}}, "serve.auth_token", "must be at least 16 characters (try: openssl rand -hex 32)", 0},
		{"serve token space", []kv{{"serve.auth_token", "hunter2-secret hunter2-secret"}}, "serve.auth_token", "may not contain spaces or line breaks", 0},
		{"serve token newline", []kv{{"serve.auth_token", "hunter2-secret-hunter2-secret\n"}}, "serve.auth_token", "may not contain spaces or line breaks", 0},

		// Values of the wrong shape: one problem each, never a second one from validation.
		{"columns not a list", []kv{{mp + ".columns", "email"}}, mp + ".columns", "must be a list, not a string", 0},
		{"source not a mapping", []kv{{sp, "s3://a/b"}}, sp, "must be a mapping of keys to values, not a string", 0},
		{"syncs not a list", []kv{{"syncs", map[string]any{"name": "x"}}}, "syncs", "must be a list, not a mapping", 0},
		{"fractional integer", []kv{{d0 + ".max_in_flight", 1.5}}, d0 + ".max_in_flight", "must be a whole number", 0},
		{"integer from text", []kv{{d0 + ".batch_size", "many"}}, d0 + ".batch_size", `"many" is not a number: must be a whole number`, 0},
		{"integer too large", []kv{{d0 + ".batch_size", 1e300}}, d0 + ".batch_size", "is too large", 0},
		{"boolean", []kv{{mp + ".skip_nulls", "yes"}}, mp + ".skip_nulls", `must be true or false, got "yes"`, 0},
		{"number", []kv{{d0 + ".rate_limit", "fast"}}, d0 + ".rate_limit", `"fast" is not a number`, 0},
		{"string from number", []kv{{mp + ".user_id", 12}}, mp + ".user_id", "must be a string, not a number (quote it)", 0},
		{"rename value not a string", []kv{{mp + ".rename", map[string]any{"City": 5}}}, mp + ".rename.City", "must be a string", 0},
		{"header value not a string", []kv{{d0, webhook()}, {d0 + ".headers", map[string]any{"X-N": true}}}, d0 + ".headers.X-N", "must be a string, not a boolean", 0},
		{"status not a number", []kv{{d0, webhook()}, {d0 + ".non_retryable_status", []any{"teapot"}}}, d0 + ".non_retryable_status[0]", `"teapot" is not a number: must be a whole number`, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tree := baseTree()
			for _, m := range tc.muts {
				set(t, tree, m.path, m.v)
			}
			_, err := loadTree(t, tree, dir, nil)
			if err == nil {
				t.Fatalf("loaded; want %s: %s", tc.path, tc.msg)
			}
			ce := asConfigError(t, err)
			if !ce.Has(tc.path, tc.msg) {
				t.Fatalf("want %s: %s; got%s", tc.path, tc.msg, problems(err))
			}
			n := tc.n
			if n == 0 {
				n = 1
			}
			if len(ce.Errors) != n {
				t.Fatalf("want %d problem(s), got%s", n, problems(err))
			}
			if strings.Contains(err.Error(), "hunter2-secret") {
				t.Fatalf("error shows a secret: %v", err)
			}
		})
	}
}

// TestValidConfigs loads configurations that use each feature correctly.
func TestValidConfigs(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		muts []kv
	}{
		{"base", nil},
		{"recursive include", []kv{{sp + ".include", "**/*.parquet"}}},
		{"latest partition", []kv{{sp + ".partition", "latest"}}},
		{"local source", []kv{{sp + ".url", "."}}},
		{"file URL source", []kv{{sp + ".url", "file://" + dir}}},
		{"keys auth", []kv{{sp + ".auth", map[string]any{"mode": "keys", "access_key_id": "AK", "secret_access_key": "s", "session_token": "t"}}}},
		{"role auth", []kv{{sp + ".auth", map[string]any{"mode": "role", "role_arn": "arn:aws:iam::123456789012:role/backflow", "external_id": "x", "session_name": "n"}}}},
		{"gov cloud role", []kv{{sp + ".auth", map[string]any{"mode": "role", "role_arn": "arn:aws-us-gov:iam::123456789012:role/path/backflow"}}}},
		{"sqs discovery", []kv{{sp + ".discovery", map[string]any{"type": "sqs", "queue_url": sqsQueue, "endpoint": "http://127.0.0.1:9324", "reconcile": "1h"}}}},
		{"sqs discovery reconcile 0", []kv{{sp + ".discovery", map[string]any{"type": "sqs", "queue_url": sqsQueue, "reconcile": "0s"}}}},
		{"list discovery", []kv{{sp + ".discovery.type", "list"}}},
		{"s3 connection", []kv{{sp + ".endpoint", "http://127.0.0.1:9000"}, {sp + ".path_style", true}, {sp + ".region", "us-east-1"}}},
		{"anonymous only", []kv{{mp + ".user_id", removed{}}, {mp + ".anonymous_id", "anon"}}},
		{"track event", []kv{{mp + ".type", "track"}, {mp + ".event", "Order Completed"}}},
		{"track event column", []kv{{mp + ".type", "track"}, {mp + ".event_column", "event_name"}}},
		{"group", []kv{{mp + ".type", "group"}, {mp + ".group_id", "company_id"}}},
		{"columns rename constants", []kv{{mp + ".columns", []any{"email", "city", "zip"}}, {mp + ".rename", map[string]any{"city": "address.city", "zip": "address.zip"}}, {mp + ".constants", map[string]any{"source": "warehouse", "meta.v": 2}}, {mp + ".skip_nulls", true}, {mp + ".timestamp", "updated_at"}}},
		{"diff", []kv{{"syncs[0].mode", "diff"}}},
		{"full", []kv{{"syncs[0].mode", "full"}}},
		{"every with start", []kv{{"syncs[0].schedule.every", "1h"}, {"syncs[0].schedule.start", "2025-01-01T00:30:00+02:00"}}},
		{"cron", []kv{{"syncs[0].schedule.cron", "*/15 * * * *"}}},
		{"cron descriptor", []kv{{"syncs[0].schedule.cron", "@hourly"}}},
		{"segment", []kv{{d0, map[string]any{"type": "segment", "write_key": "wk", "endpoint": "http://127.0.0.1:1234", "max_in_flight": 8, "rate_limit": 2.5, "retry": map[string]any{"max_attempts": 3, "max_backoff": "1m"}, "timeout": "5s", "batch_size": 50}}}},
		{"webhook", []kv{{d0, map[string]any{"type": "webhook", "url": "https://hooks.example.com/x", "headers": map[string]any{"Authorization": "Bearer t"}, "gzip": true, "non_retryable_status": []any{400, 422}}}}},
		{"file and stdout", []kv{{d0, map[string]any{"type": "file", "path": "out/users.jsonl"}}, {d1, map[string]any{"type": "stdout"}}}},
		{"two named stdouts", []kv{{d0 + ".name", "one"}, {d1, map[string]any{"type": "stdout", "name": "two"}}}},
		{"s3 csv tab", []kv{{d0, map[string]any{"type": "s3", "url": "s3://lake", "format": "csv", "compression": "gzip", "csv": map[string]any{"delimiter": "tab", "quote_all": true}, "max_object_rows": 10, "verify_object": "ok.txt", "endpoint": "http://127.0.0.1:9000", "path_style": true, "region": "us-east-1", "auth": map[string]any{"mode": "keys", "access_key_id": "a", "secret_access_key": "b"}}}}},
		{"s3 parquet", []kv{{d0, map[string]any{"type": "s3", "url": "s3://lake/prefix/", "format": "parquet", "key": "{stream_name}/{connection_run_id}-{part}.{extension}"}}}},
		{"s3 state", []kv{{"state.url", "s3://b/state"}, {"state.region", "eu-west-1"}, {"state.auth", map[string]any{"mode": "keys", "access_key_id": "a", "secret_access_key": "b"}}}},
		{"serve", []kv{{"serve", map[string]any{"max_concurrent_runs": 1, "history": 5, "shutdown_grace": "2m", "auth_token": "0123456789abcdef"}}}},
		{"numbers as text", []kv{{d0 + ".batch_size", "25"}, {d0 + ".rate_limit", "0.5"}, {mp + ".skip_nulls", "true"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tree := baseTree()
			for _, m := range tc.muts {
				set(t, tree, m.path, m.v)
			}
			if _, err := loadTree(t, tree, dir, nil); err != nil {
				t.Fatalf("unexpected problems:%s", problems(err))
			}
		})
	}
}

// TestAllProblemsAtOnce checks that one load reports every problem, sorted by path
// (indexes by number), each line prefixed with the file.
func TestAllProblemsAtOnce(t *testing.T) {
	types := strings.Join(all.Registry().Types(), ", ")
	tree := baseTree()
	for i := 1; i <= 10; i++ {
		set(t, tree, "syncs["+itoa(i)+"]", map[string]any{
			"name": "s" + itoa(i), "source": map[string]any{"url": "s3://b/p"},
			"mapping": map[string]any{"type": "identify", "user_id": "u"}, "destinations": []any{map[string]any{"type": "stdout"}},
		})
	}
	set(t, tree, "syncs[10].mode", "weekly")
	set(t, tree, "syncs[2].mode", "weekly")
	set(t, tree, "syncs[0].mapping.colums", []any{"a"})
	set(t, tree, "serve.history", 0)
	set(t, tree, "syncs[0].destinations[0].type", "pigeon")

	path := filepath.Join(t.TempDir(), "backflow.json")
	writeJSON(t, path, tree)
	_, err := config.Load(path, env(nil), all.Registry())
	ce := asConfigError(t, err)
	want := []string{
		path + `: serve.history: must be at least 1`,
		path + `: syncs[0].destinations[0].type: "pigeon" is not one of ` + types,
		path + `: syncs[0].mapping.colums: unknown key, did you mean "columns"?`,
		path + `: syncs[2].mode: "weekly" is not one of incremental, full, diff`,
		path + `: syncs[10].mode: "weekly" is not one of incremental, full, diff`,
	}
	if got := err.Error(); got != strings.Join(want, "\n") {
		t.Fatalf("got\n%s\nwant\n%s", got, strings.Join(want, "\n"))
	}
	if len(ce.Errors) != len(want) || ce.File != path {
		t.Fatalf("got %d problems in %q", len(ce.Errors), ce.File)
	}
}

// TestKeyTemplateChecked checks that the s3 key is judged by keytemplate.Validate and its
// verdict reported under the key's path.
func TestKeyTemplateChecked(t *testing.T) {
	const bad = "{no_such_macro}/{part}"
	verdict := keytemplate.Validate(bad)
	if verdict == nil {
		t.Skip("keytemplate.Validate accepts everything yet")
	}
	tree := baseTree()
	set(t, tree, d0, map[string]any{"type": "s3", "url": "s3://lake", "key": bad})
	_, err := loadTree(t, tree, t.TempDir(), nil)
	if ce := asConfigError(t, err); !ce.Has(d0+".key", verdict.Error()) {
		t.Fatalf("want %s.key: %v; got%s", d0, verdict, problems(err))
	}
}

// TestDiscoveryDefaults checks that a source lists by default, and that a queue's
// reconcile interval, absent or 0, is the default.
func TestDiscoveryDefaults(t *testing.T) {
	for _, tc := range []struct {
		name string
		d    map[string]any
		want config.Discovery
	}{
		{"absent", nil, config.Discovery{Type: config.DiscoveryList}},
		{"sqs", map[string]any{"type": "sqs", "queue_url": sqsQueue}, config.Discovery{Type: config.DiscoverySQS, QueueURL: sqsQueue, Reconcile: config.DefaultReconcile}},
		{"sqs reconcile 0", map[string]any{"type": "sqs", "queue_url": sqsQueue, "reconcile": "0s"}, config.Discovery{Type: config.DiscoverySQS, QueueURL: sqsQueue, Reconcile: config.DefaultReconcile}},
		{"sqs reconcile 2h", map[string]any{"type": "sqs", "queue_url": sqsQueue, "reconcile": "2h", "endpoint": "http://127.0.0.1:1"}, config.Discovery{Type: config.DiscoverySQS, QueueURL: sqsQueue, Reconcile: 2 * time.Hour, Endpoint: "http://127.0.0.1:1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tree := baseTree()
			if tc.d != nil {
				set(t, tree, sp+".discovery", tc.d)
			}
			c, err := loadTree(t, tree, t.TempDir(), nil)
			if err != nil {
				t.Fatalf("unexpected problems:%s", problems(err))
			}
			if got := c.Syncs[0].Source.Discovery; got != tc.want {
				t.Fatalf("discovery %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestEveryDecodeProblemAtOnce: every bad value is reported in one load, each with one
// message whatever its neighbours, and an unset variable once.
func TestEveryDecodeProblemAtOnce(t *testing.T) {
	tree := baseTree()
	set(t, tree, "state.lease_ttl", 60)
	set(t, tree, "syncs[0].schedule.every", 5)
	set(t, tree, sp+".limits.max_record_bytes", "three")
	set(t, tree, "syncs[0].mapping.user_id", "${NOPE}")
	set(t, tree, "syncs[0].mapping.anonymous_id", "${NOPE}")
	set(t, tree, d0, map[string]any{"type": "webhook", "url": "http://x.example", "batch_size": 2.5,
		"timeout": 10, "retry": map[string]any{"max_backoff": "3"}, "max_in_flight": "${BAD}"})
	_, err := loadTree(t, tree, t.TempDir(), map[string]string{"BAD": "abc"})
	ce := asConfigError(t, err)
	want := map[string]string{
		"state.lease_ttl":               "a bare number has no unit",
		"syncs[0].schedule.every":       "a bare number has no unit",
		d0 + ".timeout":                 "a bare number has no unit",
		d0 + ".retry.max_backoff":       "a bare number has no unit",
		sp + ".limits.max_record_bytes": `"three" is not a number`,
		d0 + ".batch_size":              "must be a whole number",
		d0 + ".max_in_flight":           `"abc" is not a number`, // not a secret: shown
		"syncs[0].mapping.anonymous_id": "environment variable NOPE is not set",
	}
	for path, msg := range want {
		if !ce.Has(path, msg) {
			t.Errorf("no %q at %s:%s", msg, path, problems(err))
		}
	}
	if len(ce.Errors) != len(want) {
		t.Errorf("%d problems, want %d (one per value, NOPE once):%s", len(ce.Errors), len(want), problems(err))
	}
}
