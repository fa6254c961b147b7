package main

import (
	"io"
	"os"
	"sync"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/schollz/progressbar/v3"
)

// byteBar shows the progress of a transfer of total bytes (-1: unknown)
// as a bar with bytes, rate and time left on w when w is a terminal and
// quiet is not set; otherwise it shows nothing. Its methods are safe for
// concurrent use and do nothing on a nil bar.
type byteBar struct {
	mu  sync.Mutex
	bar *progressbar.ProgressBar
}

func newByteBar(w io.Writer, quiet bool, desc string, total int64) *byteBar {
	f, ok := w.(*os.File)
	if quiet || !ok || !isatty.IsTerminal(f.Fd()) {
		return nil
	}
	return &byteBar{bar: progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(w),
		progressbar.OptionSetDescription(desc),
		progressbar.OptionShowBytes(true),
		progressbar.OptionShowCount(),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionSetWidth(30),
		progressbar.OptionOnCompletion(func() { _, _ = io.WriteString(w, "\n") }),
	)}
}

// set shows n bytes done.
func (b *byteBar) set(n int64) {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	_ = b.bar.Set64(n)
}

// done ends the bar.
func (b *byteBar) done() {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	_ = b.bar.Finish()
}

// readerAtProgress reports the highest offset read, for an upload's bar.
type readerAtProgress struct {
	r   io.ReaderAt
	bar *byteBar
	mu  sync.Mutex
	top int64
}

func (p *readerAtProgress) ReadAt(b []byte, off int64) (int, error) {
	n, err := p.r.ReadAt(b, off)
	p.mu.Lock()
	if end := off + int64(n); end > p.top {
		p.top = end
		p.bar.set(end)
	}
	p.mu.Unlock()
	return n, err
}
