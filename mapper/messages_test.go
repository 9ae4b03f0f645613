package mapper

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/memory"

	"github.com/backflowhq/backflow/config"
)

// TestIDsAreStable pins messageIds and keys. Both are part of the contract beyond one
// run: a destination deduplicates a replayed row by its messageId, and mode diff's store
// compares keys and ids written by an earlier version. A change of the encoding or of how
// they are hashed must show here (and be a documented, deliberate break), not pass
// unnoticed because every other test compares ids of the same version with each other.
func TestIDsAreStable(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	schema := arrow.NewSchema([]arrow.Field{
		{Name: "u", Type: arrow.BinaryTypes.String, Nullable: true},
		{Name: "a", Type: arrow.PrimitiveTypes.Int64, Nullable: true},
		{Name: "g", Type: arrow.BinaryTypes.String},
		{Name: "e", Type: arrow.BinaryTypes.String},
		{Name: "plan", Type: arrow.BinaryTypes.String, Nullable: true},
		{Name: "n", Type: arrow.PrimitiveTypes.Float64},
		{Name: "at", Type: arrow.FixedWidthTypes.Timestamp_us, Nullable: true},
	}, nil)
	rec := buildRecord(t, mem, schema, [][]any{
		{"u1", int64(7), "g1", "Signed Up", "free", 1.5, t2024},
		{nil, int64(8), "g1", "Signed Up", nil, 0.1, tMilli},
		{"ü \"q\"", nil, "g2", "Paid", "pro", -2e21, nil},
	})
	defer rec.Release()
	var got []string
	for _, c := range []struct {
		name string
		mp   config.Mapping
	}{
		{"identify", config.Mapping{Type: "identify", UserID: "u", AnonymousID: "a", Timestamp: "at"}},
		{"track", config.Mapping{Type: "track", UserID: "u", AnonymousID: "a", EventColumn: "e", Timestamp: "at"}},
		{"group", config.Mapping{Type: "group", UserID: "u", AnonymousID: "a", GroupID: "g", Rename: map[string]string{"plan": "billing.plan"}}},
	} {
		msgs, rejects := mustNew(t, Options{Sync: "users", Schema: schema, Mapping: c.mp, Version: "test"}).Map(rec, 0, nil, nil)
		if len(rejects) > 0 {
			t.Fatal(rejects)
		}
		checkMessages(t, msgs)
		for _, m := range msgs {
			got = append(got, fmt.Sprintf("%s %d %s %s", c.name, m.Row, m.ID, m.Key))
		}
	}
	want := []string{
		"identify 0 bf-a4460df6da733ade4c94045c39c83fc9 99153e4c37260e02c90a67aa335f32bf",
		"identify 1 bf-129466df7e423c76c884ab4d298e2bcb bf429f13531cd08700a9ab37ecfdfa41",
		"identify 2 bf-a800867761e84078b2282bada3b5f1c7 9c4360adeab079c44c8c465979d7f144",
		"track 0 bf-284332b7ec78a196b54984b4fd2766cc 1a06c88cd2756215e8fd492bd97fca94",
		"track 1 bf-e471774e6f8c3a8d468a8c42cfb110de 1ed99563bae1627ceb9956f37d17f7db",
		"track 2 bf-11964af6707d2d07c0ce5789e15cf7ef 618f7f7f56acc4ebbce102af8a647956",
		"group 0 bf-11579ff0ada213c7daf1f442b9991822 17d51663be314aa2dbb060d19f2507c4",
		"group 1 bf-f8a2b06127ec565133565c50668dee8b 645eb16d570ca99faf5d0368748110ef",
		"group 2 bf-cb978047a497b6a8e29a06a393e95f10 72360959fca6cf2fac0ac2753c8c35c0",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("ids and keys changed:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestMessagesOfEverySize maps records whose messages range from a hundred bytes to
// hundreds of kilobytes, in random order, so that messages fill chunks, outgrow the
// free space of a chunk and land in arrays of their own. Each message must be what
// mapping its row alone gives, rejected rows must leave nothing behind, and no message
// may share bytes with another.
func TestMessagesOfEverySize(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	schema := arrow.NewSchema([]arrow.Field{
		{Name: "u", Type: arrow.BinaryTypes.String, Nullable: true},
		{Name: "text", Type: arrow.BinaryTypes.String},
	}, nil)
	m := mustNew(t, Options{Sync: "s", Schema: schema, Mapping: config.Mapping{Type: "identify", UserID: "u"}, MaxRecordBytes: 200_000})
	for seed := range 20 {
		rng := rand.New(rand.NewPCG(uint64(seed), 7))
		rows := make([][]any, 1+rng.IntN(300))
		for i := range rows {
			var size int
			switch rng.IntN(10) {
			case 0:
				size = rng.IntN(400_000) // some over max_record_bytes
			case 1, 2:
				size = rng.IntN(20_000)
			default:
				size = rng.IntN(200)
			}
			var u any = fmt.Sprintf("u%d", i)
			if rng.IntN(15) == 0 {
				u = nil // rejected: no identifier
			}
			rows[i] = []any{u, strings.Repeat(string(rune('a'+i%26)), size)}
		}
		rec := buildRecord(t, mem, schema, rows)
		msgs, rejects := m.Map(rec, 100, nil, nil)
		if len(msgs)+len(rejects) != len(rows) {
			t.Fatalf("seed %d: %d messages and %d rejects for %d rows", seed, len(msgs), len(rejects), len(rows))
		}
		checkMessages(t, msgs)
		for k := range msgs {
			i := int(msgs[k].Row - 100)
			one := rec.NewSlice(int64(i), int64(i+1))
			alone, _ := m.Map(one, msgs[k].Row, nil, nil)
			one.Release()
			if len(alone) != 1 || string(alone[0].JSON) != string(msgs[k].JSON) || alone[0].ID != msgs[k].ID || alone[0].UserID != msgs[k].UserID {
				t.Fatalf("seed %d: row %d differs from the row mapped alone", seed, i)
			}
		}
		checkIsolated(t, msgs)
		rec.Release()
	}
}

// TestMinuteCache compares the message timestamp's cached conversion with the plain one
// over random walks of instants: in time order (the cache's case), shuffled, around minute
// and day boundaries, before 1970, and around the years 0 and 10000 where the text
// changes width.
func TestMinuteCache(t *testing.T) {
	const y10000 = 253402300800 // 10000-01-01T00:00:00Z
	const y0 = -62167219200     // 0000-01-01T00:00:00Z
	starts := []int64{0, -1, 1735693696, 951782399 /* 2000-02-28T23:59:59 */, y10000 - 90, y0 - 90, y0 + 30, -86400*365*3 - 7}
	for seed := range 50 {
		rng := rand.New(rand.NewPCG(uint64(seed), 11))
		var c minuteCache
		sec := starts[seed%len(starts)]
		for i := range 2000 {
			switch rng.IntN(6) {
			case 0:
				sec += int64(rng.IntN(3)) // the same minute, mostly
			case 1:
				sec -= int64(rng.IntN(120)) // backwards
			case 2:
				sec += int64(rng.IntN(200000))
			case 3:
				sec = starts[rng.IntN(len(starts))] + int64(rng.IntN(200)) - 100
			default:
				sec++
			}
			nsec := int64(rng.IntN(1e9))
			if rng.IntN(3) == 0 {
				nsec = 0
			}
			got := string(c.appendTimestamp([]byte("x"), sec, nsec))
			want := string(appendTimestamp([]byte("x"), sec, nsec))
			if got != want {
				t.Fatalf("seed %d step %d: %d.%09d gives %q, want %q", seed, i, sec, nsec, got, want)
			}
		}
	}
}
