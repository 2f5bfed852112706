package main

import (
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
	"golang.org/x/term"

	"github.com/rbee-dev/rbee"
)

// progress shows progress events: bars on a terminal, a plain line every
// few seconds elsewhere (logs, CI).
type progress struct {
	mu    sync.Mutex
	tty   bool
	p     *mpb.Progress
	bars  map[string]*mpb.Bar
	lastT map[string]time.Time
}

func newProgress() *progress {
	return &progress{tty: term.IsTerminal(int(os.Stderr.Fd())), bars: map[string]*mpb.Bar{}, lastT: map[string]time.Time{}}
}

func (pr *progress) event(ev rbee.Event) {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	key := ev.Actor + "/" + ev.Action
	if !pr.tty || ev.BytesTotal <= 0 {
		if time.Since(pr.lastT[key]) < 2*time.Second && ev.BytesDone != ev.BytesTotal {
			return
		}
		pr.lastT[key] = time.Now()
		fmt.Fprintf(os.Stderr, "[%s] %s\n", printable(ev.Actor), printable(ev.Message))
		return
	}
	if pr.p == nil {
		pr.p = mpb.New(mpb.WithOutput(os.Stderr), mpb.WithWidth(40), mpb.WithRefreshRate(150*time.Millisecond))
	}
	bar := pr.bars[key]
	if bar == nil {
		bar = pr.p.AddBar(ev.BytesTotal,
			mpb.PrependDecorators(decor.Name(fmt.Sprintf("[%s] %s ", printable(ev.Actor), printable(ev.Action))), decor.CountersKibiByte("% .1f / % .1f")),
			mpb.AppendDecorators(decor.Percentage(), decor.Name(" "), decor.AverageSpeed(decor.SizeB1024(0), "% .1f")),
		)
		pr.bars[key] = bar
	}
	bar.SetCurrent(ev.BytesDone)
}

// close finishes the bars (complete or not) so the terminal is clean.
func (pr *progress) close() {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	if pr.p == nil {
		return
	}
	for _, b := range pr.bars {
		if !b.Completed() {
			b.Abort(false)
		}
	}
	pr.p.Wait()
	pr.p = nil
}
