package main

import (
	"fmt"
	"io"
	"os"
	"sync/atomic"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/backflowhq/backflow/pipeline"
)

func isTerminal(w any) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// progressBar draws bytes read against the bytes planned, with rows and files read.
type progressBar struct {
	pipeline.NopObserver
	w     io.Writer
	sync  string
	bar   atomic.Pointer[progressbar.ProgressBar]
	rows  atomic.Int64
	files atomic.Int64
	total atomic.Int64
}

var _ pipeline.ProgressObserver = (*progressBar)(nil)

func newProgressBar(w io.Writer, sync string) *progressBar {
	return &progressBar{w: w, sync: sync}
}

func (p *progressBar) Planned(_ string, files int, bytes int64) {
	p.total.Store(int64(files))
	p.bar.Store(progressbar.NewOptions64(bytes,
		progressbar.OptionSetWriter(p.w),
		progressbar.OptionShowBytes(true),
		progressbar.OptionSetWidth(30),
		progressbar.OptionThrottle(100_000_000),
		progressbar.OptionSetDescription(p.describe()),
		progressbar.OptionClearOnFinish(),
	))
}

func (p *progressBar) describe() string {
	return fmt.Sprintf("%s: files %d/%d, rows %d", p.sync, p.files.Load(), p.total.Load(), p.rows.Load())
}

func (p *progressBar) RowsRead(_ string, rows, bytes int64) {
	p.rows.Add(rows)
	if b := p.bar.Load(); b != nil {
		if bytes > 0 {
			_ = b.Add64(bytes)
		}
		b.Describe(p.describe())
	}
}

func (p *progressBar) FileRead(string, string) {
	p.files.Add(1)
	if b := p.bar.Load(); b != nil {
		b.Describe(p.describe())
	}
}

func (p *progressBar) finish() {
	if b := p.bar.Load(); b != nil {
		_ = b.Finish()
	}
}
