package s3

import (
	"github.com/apache/arrow-go/v18/parquet/compress"
	"github.com/klauspost/compress/s2"
)

// fastSnappy is arrow-go's Snappy codec writing blocks with klauspost/compress's default
// Snappy encoder rather than its "better" one, which arrow-go calls: the blocks are
// standard Snappy either way (every reader decodes them), the better encoder takes 3.5
// times the CPU (BenchmarkSnappy) for pages 6% smaller on the bench's table, and it was an
// eighth of the CPU time of a sync to the s3 destination in Parquet. Decoding is arrow-go's.
type fastSnappy struct{ compress.Codec }

func (c fastSnappy) Encode(dst, src []byte) []byte { return s2.EncodeSnappy(dst, src) }

func (c fastSnappy) EncodeLevel(dst, src []byte, _ int) []byte { return s2.EncodeSnappy(dst, src) }

// init registers fastSnappy in place of arrow-go's Snappy codec. arrow-go keeps its codecs
// in a process-wide table without a lock: it may only change at initialization.
func init() {
	if c, err := compress.GetCodec(compress.Codecs.Snappy); err == nil {
		compress.RegisterCodec(compress.Codecs.Snappy, fastSnappy{c})
	}
}
