package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// progress keeps one status line on stderr while the bench runs: rewritten in place on a
// terminal, printed every few seconds otherwise (make's output piped to a file).
type progress struct {
	w     io.Writer
	tty   bool
	start time.Time

	mu     sync.Mutex
	phase  string
	status func() string
	shown  bool // a status line is on the terminal and must be cleared before other output
}

func newProgress(w io.Writer) *progress {
	p := &progress{w: w, start: time.Now()}
	if f, ok := w.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			p.tty = true
		}
	}
	return p
}

// run refreshes the status line until ctx ends.
func (p *progress) run(ctx context.Context) {
	every := 5 * time.Second
	if p.tty {
		every = 250 * time.Millisecond
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			p.mu.Lock()
			p.clear()
			p.mu.Unlock()
			return
		case <-t.C:
			p.show()
		}
	}
}

// set names the current phase; status, called on every refresh, says how far it is.
func (p *progress) set(phase string, status func() string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.phase, p.status = phase, status
}

// logf prints a line that stays.
func (p *progress) logf(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.clear()
	fmt.Fprintf(p.w, "bench %5.1fs  "+format+"\n", append([]any{time.Since(p.start).Seconds()}, args...)...)
}

func (p *progress) show() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.phase == "" {
		return
	}
	line := fmt.Sprintf("bench %5.1fs  [%s]", time.Since(p.start).Seconds(), p.phase)
	if p.status != nil {
		line += " " + p.status()
	}
	if p.tty {
		fmt.Fprintf(p.w, "\r\033[K%s", line)
		p.shown = true
		return
	}
	fmt.Fprintln(p.w, line)
}

func (p *progress) clear() {
	if p.shown {
		fmt.Fprint(p.w, "\r\033[K")
		p.shown = false
	}
}
