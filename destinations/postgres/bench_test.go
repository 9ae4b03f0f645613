package postgres

import (
	"fmt"
	"strconv"
	"testing"

	"github.com/backflowhq/backflow/mapper"
)

// BenchmarkEncode measures backflow's own work per batch of 1,000 identify messages with
// 10 traits (flattening, deduplicating, building the COPY data), without a server:
//
//	go test -run '^$' -bench Encode -benchmem ./destinations/postgres/
func BenchmarkEncode(b *testing.B) {
	msgs := make([]mapper.Message, 1000)
	for i := range msgs {
		body := fmt.Sprintf(`{"email":"u%d@x.io","plan":"pro","ltv":%d.%02d,"active":%t,"address":{"city":"Oslo"},"orders":%d,"score":0.5,"coupon":null,"src":"dw","n":%d}`,
			i, i%500, i%100, i%3 == 0, i%7, i)
		j := []byte(`{"type":"identify","userId":"u` + strconv.Itoa(i) + `","traits":`)
		bs := len(j)
		j = append(j, body...)
		msgs[i] = mapper.Message{Type: "identify", UserID: "u" + strconv.Itoa(i), ID: strconv.Itoa(i), JSON: append(j, '}'), BodyStart: bs, BodyEnd: bs + len(body)}
	}
	for _, layout := range []string{LayoutColumns, LayoutJSONB} {
		b.Run(layout, func(b *testing.B) {
			d := &Destination{layout: layout, key: KeyUserID}
			cols := map[string]column{}
			bt, _ := d.prepare(msgs)
			for _, c := range bt.cols {
				cols[c] = column{typ: "text", typname: "text", category: "S"}
			}
			b.ReportAllocs()
			for b.Loop() {
				bt, failed := d.prepare(msgs)
				if len(failed) > 0 {
					b.Fatal(failed[0].Err)
				}
				_, r := bt.copyData()
				b.SetBytes(r.Size())
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(msgs)), "ns/row")
		})
	}
}
