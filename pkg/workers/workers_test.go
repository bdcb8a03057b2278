package workers

import (
	"bytes"
	"fmt"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestGoRunsEveryFunctionAtOnce(t *testing.T) {
	t.Parallel()
	p := New(time.Minute)
	// Every function must be running at the same time for any to finish: a pool that
	// queued work behind busy workers would deadlock here.
	const n = 50
	var wg sync.WaitGroup
	var started sync.WaitGroup
	started.Add(n)
	var ran atomic.Int32
	for range n {
		p.Go(&wg, func() {
			started.Done()
			started.Wait()
			ran.Add(1)
		})
	}
	wg.Wait()
	if got := ran.Load(); got != n {
		t.Fatalf("ran %d functions, want %d", got, n)
	}
}

func TestIdleWorkerTakesTheNextFunction(t *testing.T) {
	t.Parallel()
	p := New(time.Minute)
	var wg sync.WaitGroup
	var first, second uint64
	p.Go(&wg, func() { first = goid() })
	wg.Wait()
	// The worker that ran the first function parks on the pool's channel; wait until it does.
	deadline := time.Now().Add(10 * time.Second)
	for {
		p.Go(&wg, func() { second = goid() })
		wg.Wait()
		if second == first || time.Now().After(deadline) {
			break
		}
		first = second // a new worker ran it; that one is the idle one now
	}
	if second != first {
		t.Fatal("no function ran on a worker that had run one before")
	}
}

func TestIdleWorkersEnd(t *testing.T) {
	t.Parallel()
	p := New(10 * time.Millisecond)
	var wg sync.WaitGroup
	var id uint64
	p.Go(&wg, func() { id = goid() })
	wg.Wait()
	deadline := time.Now().Add(10 * time.Second)
	for alive(id) {
		if time.Now().After(deadline) {
			t.Fatalf("worker %d still alive 10 s after it went idle", id)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// goid is the calling goroutine's id, from its stack trace's first line.
func goid() uint64 {
	buf := make([]byte, 64)
	buf = buf[:runtime.Stack(buf, false)]
	field := bytes.Fields(buf)[1] // "goroutine 42 [running]:"
	id, _ := strconv.ParseUint(string(field), 10, 64)
	return id
}

// alive reports whether goroutine id exists.
func alive(id uint64) bool {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	return bytes.Contains(buf, fmt.Appendf(nil, "goroutine %d [", id))
}
