package server

import (
	"context"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"

	"notify/pkg/tracing"
)

// SpanStore is the span of a Publish's (or a PublishBatch's) database work: for a Publish,
// from its submission to the group commit until its batch is committed, with the batch's
// size (notify.rows); the transaction is shared, each call's span is its own.
const SpanStore = "producer.store"

// GroupCommit tunes how concurrent Publish calls are written together.
type GroupCommit struct {
	// MaxBatch is the most calls written in one transaction (default 100).
	MaxBatch int
	// Linger is how long calls that arrive while a commit is running wait for more calls
	// before their own commit starts (default 500µs). A call that finds no commit running
	// is written at once: a lone call never lingers.
	Linger time.Duration
	// MaxCommits is how many batch transactions run at once (default 2); calls arriving
	// while that many run queue for the next batch.
	MaxCommits int
	// Timeout bounds one batch's writing (default 30s). It does not follow any caller's
	// context: one caller giving up never fails its neighbours.
	Timeout time.Duration
}

func (o GroupCommit) withDefaults() GroupCommit {
	if o.MaxBatch <= 0 {
		o.MaxBatch = 100
	}
	if o.Linger <= 0 {
		o.Linger = 500 * time.Microsecond
	}
	if o.MaxCommits <= 0 {
		o.MaxCommits = 2
	}
	if o.Timeout <= 0 {
		o.Timeout = 30 * time.Second
	}
	return o
}

// committer coalesces concurrent calls into group commits: each call queues its row and
// waits; batches are written by store, at most MaxCommits at a time. A batch starts
//
//   - at once when no commit is running (a lone call pays no linger),
//   - at once when MaxBatch calls are queued and a commit slot is free,
//   - after Linger when a commit is running and a slot is free (more calls are likely),
//   - when a running commit ends, for the calls that queued meanwhile.
//
// Each caller is answered with its own row's outcome once its batch is committed.
type committer struct {
	store func(ctx context.Context, rows []row) []stored
	done  func(rows []row, results []stored) // after each batch (wake the relay, metrics)
	opts  GroupCommit

	mu      sync.Mutex
	queue   []*pendingRow
	running int
	timer   *time.Timer // the armed linger, nil when none
}

type pendingRow struct {
	ctx    context.Context
	row    row
	answer chan stored // buffered: the committer never waits for a caller
	batch  int         // the rows written with it, set before the answer is sent
}

func newCommitter(opts GroupCommit, store func(context.Context, []row) []stored, done func([]row, []stored)) *committer {
	return &committer{store: store, done: done, opts: opts.withDefaults()}
}

// submit writes r in the next batch and returns its outcome, or ctx's error when the caller
// gives up first (the row may still be committed: the client retries with its key).
func (c *committer) submit(ctx context.Context, r row) (stored, error) {
	_, span := tracing.Tracer().Start(ctx, SpanStore)
	p := &pendingRow{ctx: ctx, row: r, answer: make(chan stored, 1)}
	c.mu.Lock()
	c.queue = append(c.queue, p)
	c.flushLocked(false)
	c.mu.Unlock()
	select {
	case s := <-p.answer:
		if span.IsRecording() {
			span.SetAttributes(attribute.Int("notify.rows", p.batch), attribute.Bool("notify.duplicate", s.duplicate))
		}
		tracing.End(span, s.err)
		return s, nil
	case <-ctx.Done():
		tracing.End(span, ctx.Err())
		return stored{}, ctx.Err()
	}
}

// flushLocked starts the batches the rules above allow; lingered says the linger is over.
func (c *committer) flushLocked(lingered bool) {
	for len(c.queue) > 0 && c.running < c.opts.MaxCommits {
		if c.running > 0 && len(c.queue) < c.opts.MaxBatch && !lingered {
			if c.timer == nil {
				c.timer = time.AfterFunc(c.opts.Linger, c.lingerOver)
			}
			return
		}
		n := min(len(c.queue), c.opts.MaxBatch)
		batch := make([]*pendingRow, n)
		copy(batch, c.queue)
		c.queue = c.queue[n:]
		c.running++
		go c.commit(batch)
	}
	if len(c.queue) == 0 && c.timer != nil {
		c.timer.Stop()
		c.timer = nil
	}
}

func (c *committer) lingerOver() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.timer = nil
	c.flushLocked(true)
}

// commit writes one batch, answers its callers and starts what queued meanwhile.
func (c *committer) commit(batch []*pendingRow) {
	rows := make([]row, 0, len(batch))
	live := batch[:0]
	for _, p := range batch {
		if p.ctx.Err() == nil { // a caller that gave up is not written
			rows = append(rows, p.row)
			live = append(live, p)
		}
	}
	if len(rows) > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), c.opts.Timeout)
		results := c.store(ctx, rows)
		cancel()
		for i, p := range live {
			p.batch = len(rows)
			p.answer <- results[i]
		}
		c.done(rows, results)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.running--
	c.flushLocked(false)
}
