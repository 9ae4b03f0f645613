package s3

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/apache/arrow-go/v18/parquet/compress"
	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/snappy"
)

// TestFastSnappyWritesStandardSnappy checks that the codec arrow-go uses for Snappy pages
// is fastSnappy and that its blocks decode with a plain Snappy decoder, and with the
// codec's own Decode, to the bytes encoded.
func TestFastSnappyWritesStandardSnappy(t *testing.T) {
	c, err := compress.GetCodec(compress.Codecs.Snappy)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := c.(fastSnappy); !ok {
		t.Fatalf("arrow-go's Snappy codec is %T, want fastSnappy", c)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{0, 1, 100, 65536, 1 << 20} {
		src := make([]byte, n)
		for i := range src {
			if i%7 == 0 {
				src[i] = byte(rng.IntN(256))
			} else {
				src[i] = "user@example.com"[i%16]
			}
		}
		enc := c.EncodeLevel(make([]byte, c.CompressBound(int64(n))), src, 0)
		got, err := snappy.Decode(nil, enc)
		if err != nil || !bytes.Equal(got, src) {
			t.Fatalf("%d bytes: a Snappy decoder read back %d bytes (%v)", n, len(got), err)
		}
		if again := c.Decode(nil, enc); !bytes.Equal(again, src) {
			t.Fatalf("%d bytes: the codec's Decode read back %d bytes", n, len(again))
		}
	}
}

// BenchmarkSnappy compares the Snappy encoder the s3 destination uses with the one
// arrow-go calls, on 1 MiB of page-like data (e-mail addresses and small numbers):
//
//	go test -run '^$' -bench BenchmarkSnappy -count 6 ./destinations/s3/ | benchstat -col /encoder -
func BenchmarkSnappy(b *testing.B) {
	var page []byte
	for i := 0; len(page) < 1<<20; i++ {
		page = fmt.Appendf(page, "user%d@example.com%c%d", i*7919, 0, i%500)
	}
	dst := make([]byte, snappy.MaxEncodedLen(len(page)))
	for _, enc := range []struct {
		name string
		fn   func(dst, src []byte) []byte
	}{{"fast", s2.EncodeSnappy}, {"better", s2.EncodeSnappyBetter}} {
		b.Run("encoder="+enc.name, func(b *testing.B) {
			b.SetBytes(int64(len(page)))
			var out int
			for b.Loop() {
				out = len(enc.fn(dst, page))
			}
			b.ReportMetric(float64(out)/float64(len(page)), "ratio")
		})
	}
}
