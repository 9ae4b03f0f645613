package mapper

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"

	"github.com/backflowhq/backflow/config"
)

var benchSchema = arrow.NewSchema([]arrow.Field{
	{Name: "user_id", Type: arrow.BinaryTypes.String},
	{Name: "email", Type: arrow.BinaryTypes.String},
	{Name: "orders", Type: arrow.PrimitiveTypes.Int64},
	{Name: "age", Type: arrow.PrimitiveTypes.Int32},
	{Name: "visits", Type: arrow.PrimitiveTypes.Int64},
	{Name: "ltv", Type: arrow.PrimitiveTypes.Float64},
	{Name: "score", Type: arrow.PrimitiveTypes.Float32},
	{Name: "active", Type: arrow.FixedWidthTypes.Boolean},
	{Name: "updated_at", Type: arrow.FixedWidthTypes.Timestamp_us},
	{Name: "nickname", Type: arrow.BinaryTypes.String, Nullable: true},
}, nil)

var benchMapping = config.Mapping{Type: "identify", UserID: "user_id", Timestamp: "updated_at"}

// benchRecord builds n rows of a typical users export: 2 strings, 3 ints, 2 floats, a
// boolean, a timestamp and a nullable string (null every third row).
func benchRecord(t testing.TB, mem memory.Allocator, n int) arrow.RecordBatch {
	b := array.NewRecordBuilder(mem, benchSchema)
	defer b.Release()
	base := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC).UnixMicro()
	for i := range n {
		b.Field(0).(*array.StringBuilder).Append(fmt.Sprintf("user-%08d", i))
		b.Field(1).(*array.StringBuilder).Append(fmt.Sprintf("user%d@example.com", i))
		b.Field(2).(*array.Int64Builder).Append(int64(i % 1000))
		b.Field(3).(*array.Int32Builder).Append(int32(18 + i%60))
		b.Field(4).(*array.Int64Builder).Append(int64(i) * 7919)
		b.Field(5).(*array.Float64Builder).Append(float64(i%100000) * 1.37)
		b.Field(6).(*array.Float32Builder).Append(float32(i%1000) / 7)
		b.Field(7).(*array.BooleanBuilder).Append(i%2 == 0)
		b.Field(8).(*array.TimestampBuilder).Append(arrow.Timestamp(base + int64(i)*1_234_567))
		if i%3 == 0 {
			b.Field(9).AppendNull()
		} else {
			b.Field(9).(*array.StringBuilder).Append(fmt.Sprintf("nick %d", i))
		}
	}
	return b.NewRecordBatch()
}

// BenchmarkMap maps 1M rows (in records of 64Ki rows, pqarrow's usual batch size) per
// operation and reports messages per second and allocations per message.
func BenchmarkMap(b *testing.B) {
	const rows, batch = 1 << 20, 1 << 16
	mem := memory.NewGoAllocator()
	recs := make([]arrow.RecordBatch, rows/batch)
	whole := benchRecord(b, mem, batch)
	defer whole.Release()
	for i := range recs {
		recs[i] = whole // the same rows: the data is not what is measured
	}
	m := mustNew(b, Options{Sync: "bench", Schema: benchSchema, Mapping: benchMapping, MaxRecordBytes: 1 << 20})
	msgs := make([]Message, 0, batch)
	var bytes int64
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	cpu0 := cpuTime()
	b.ResetTimer()
	for b.Loop() {
		for i, rec := range recs {
			msgs, _ = m.Map(rec, int64(i*batch), msgs[:0], nil)
			for _, msg := range msgs {
				bytes += int64(len(msg.JSON))
			}
		}
	}
	b.StopTimer()
	cpu := cpuTime() - cpu0
	runtime.ReadMemStats(&after)
	n := float64(b.N) * rows
	b.ReportMetric(n/b.Elapsed().Seconds(), "msgs/s")
	if cpu > 0 {
		// Messages per second of CPU time (all threads, GC included).
		b.ReportMetric(n/cpu.Seconds(), "msgs/cpu-s")
	}
	b.ReportMetric(float64(after.Mallocs-before.Mallocs)/n, "allocs/msg")
	b.ReportMetric(float64(bytes)/n, "bytes/msg")
}

// BenchmarkTimestamp converts instants one second apart (an export in time order), with
// and without the message timestamp's minute cache.
func BenchmarkTimestamp(b *testing.B) {
	const start = 1735693696 // 2025-01-01T01:08:16Z
	b.Run("conversion=plain", func(b *testing.B) {
		dst := make([]byte, 0, 64)
		for i := 0; b.Loop(); i++ {
			dst = appendTimestamp(dst[:0], start+int64(i), 27416000)
		}
	})
	b.Run("conversion=cached", func(b *testing.B) {
		dst := make([]byte, 0, 64)
		var c minuteCache
		for i := 0; b.Loop(); i++ {
			dst = c.appendTimestamp(dst[:0], start+int64(i), 27416000)
		}
	})
}
