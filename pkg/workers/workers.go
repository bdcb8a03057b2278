// Package workers runs functions on goroutines that stay for the next ones.
//
// A send to FCM goes deep (the Firebase SDK, net/http, encoding/json), and a fresh
// goroutine grows its stack to that depth by doubling, copying the stack each time: with a
// new goroutine per send, runtime.morestack was 9% of the sender's CPU in make bench's
// sustain phase. A goroutine that has sent before has the stack already (until the garbage
// collector halves the stack of one that sat idle). gRPC's NumStreamWorkers does the same
// for calls.
//
// Hand-written rather than a pool library: it is the few lines gRPC's own workers are, it
// has no limit of its own (callers keep the bounds they had: every function handed to Go
// runs at once, on a new goroutine when no worker is idle), and a worker idle for the
// pool's idle time ends, so an idle process keeps none.
package workers

import (
	"sync"
	"time"
)

// Pool hands functions to its idle workers. The zero Pool is not usable; use New.
type Pool struct {
	work chan func()
	idle time.Duration
}

// Idle is how long the senders' workers wait for the next function before they end: long
// enough to outlast the pauses between batches, short enough that an idle process keeps none.
const Idle = time.Minute

// New returns a Pool whose workers end after idle without work.
func New(idle time.Duration) *Pool {
	return &Pool{work: make(chan func()), idle: idle}
}

// Go runs f at once, on an idle worker or else a new one, and marks it done in wg.
func (p *Pool) Go(wg *sync.WaitGroup, f func()) {
	wg.Add(1)
	job := func() {
		defer wg.Done()
		f()
	}
	select {
	case p.work <- job:
	default:
		go p.run(job)
	}
}

// run runs job, then every job handed to it, until it has waited idle for work.
func (p *Pool) run(job func()) {
	wait := time.NewTimer(p.idle)
	defer wait.Stop()
	for {
		job()
		wait.Reset(p.idle)
		select {
		case job = <-p.work:
		case <-wait.C:
			return
		}
	}
}
