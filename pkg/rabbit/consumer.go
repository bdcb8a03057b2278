package rabbit

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// ConsumerOptions tunes a Consumer. The zero value is usable.
type ConsumerOptions struct {
	// Concurrency is the number of handler goroutines; default 1.
	Concurrency int
	// Prefetch is how many unacked deliveries the broker sends ahead (basic.qos); default
	// 2 × Concurrency × BatchSize, so that a batch can fill while the handlers are busy.
	Prefetch int
	// BatchSize is the most deliveries a BatchHandler gets at once (NewBatchConsumer;
	// default 64). A Handler always gets one.
	BatchSize int
	// BatchLinger is how long a batch waits for more deliveries after its first one arrived
	// while another batch is being handled (NewBatchConsumer; default 5ms): a batch goes to
	// a handler when it is full or its linger has passed, whichever comes first, and while
	// every handler is busy it keeps filling up to BatchSize. A delivery that arrives while
	// no handler is busy goes at once, with whatever arrived with it: a lone message never
	// lingers, as a lone Publish never waits for a group commit.
	BatchLinger time.Duration
	// HandlerTimeout is each handler call's deadline; 0 means none.
	HandlerTimeout time.Duration
	// ShutdownTimeout is how long Run lets in-flight handlers finish after its ctx ends
	// before cancelling their ctx; default 20s (keep it below the Conn's DrainTimeout).
	ShutdownTimeout time.Duration
	// MinRequeuePause and MaxRequeuePause bound the pause before a failed delivery is
	// handled again or requeued: it starts at MinRequeuePause, doubles with each consecutive
	// failure up to MaxRequeuePause and starts over after a success. Defaults 250ms and 30s.
	MinRequeuePause, MaxRequeuePause time.Duration
	// HoldFor is how long a delivery whose handler asks for a requeue is kept, unacked, and
	// handed to the handler again after each pause, counted from when it was received;
	// default 10 minutes. Only then is it handed back to the queue. A handback spends one of
	// the queue's x-delivery-limit redeliveries and a retry in place spends none, so a
	// database outage of hours does not dead-letter healthy messages, while a crash loop
	// (the process dying with the message) still ends at the limit. Keep it well below the
	// broker's consumer_timeout (30 minutes by default), which closes a channel holding a
	// delivery unacked for longer.
	HoldFor time.Duration
}

// Consumer consumes one queue with manual acks, re-subscribing on a fresh channel after every
// reconnect.
type Consumer struct {
	conn    *Conn
	queue   string
	handler BatchHandler
	opts    ConsumerOptions
	log     *slog.Logger
	pause   pacer

	// live is the generation of the channel currently consuming (0: none). A delivery from
	// any other generation is stale: its channel is gone and the broker will redeliver it.
	live atomic.Uint64
	// busy is how many handlers are running; a batch lingers only while one is.
	busy atomic.Int32

	mu      sync.Mutex
	downErr error // why the last subscription failed or ended, for Check
}

// DefaultHoldFor is ConsumerOptions.HoldFor's default.
const DefaultHoldFor = 10 * time.Minute

// NewConsumer returns a Consumer of queue on conn that hands h one delivery at a time; Run
// starts it.
func NewConsumer(conn *Conn, queue string, h Handler, opts ConsumerOptions) *Consumer {
	opts.BatchSize, opts.BatchLinger = 1, 0
	return newConsumer(conn, queue, func(ctx context.Context, ds []*Delivery) []error {
		return []error{h(ctx, ds[0])}
	}, opts)
}

// NewBatchConsumer returns a Consumer of queue on conn that hands h the deliveries in
// batches of up to ConsumerOptions.BatchSize; Run starts it.
func NewBatchConsumer(conn *Conn, queue string, h BatchHandler, opts ConsumerOptions) *Consumer {
	opts.BatchSize = cmp.Or(max(opts.BatchSize, 0), 64)
	opts.BatchLinger = cmp.Or(max(opts.BatchLinger, 0), 5*time.Millisecond)
	return newConsumer(conn, queue, h, opts)
}

func newConsumer(conn *Conn, queue string, h BatchHandler, opts ConsumerOptions) *Consumer {
	opts.Concurrency = max(opts.Concurrency, 1)
	opts.Prefetch = cmp.Or(opts.Prefetch, 2*opts.Concurrency*opts.BatchSize)
	opts.ShutdownTimeout = cmp.Or(opts.ShutdownTimeout, 20*time.Second)
	opts.MinRequeuePause = cmp.Or(opts.MinRequeuePause, 250*time.Millisecond)
	opts.MaxRequeuePause = max(cmp.Or(opts.MaxRequeuePause, 30*time.Second), opts.MinRequeuePause)
	opts.HoldFor = cmp.Or(opts.HoldFor, DefaultHoldFor)
	return &Consumer{
		conn:    conn,
		queue:   queue,
		handler: h,
		opts:    opts,
		log:     conn.log.With("queue", queue),
		pause:   pacer{min: opts.MinRequeuePause, max: opts.MaxRequeuePause},
	}
}

// Delivery is one message received from a queue. The Consumer settles it from what its
// Handler returns; handlers never settle deliveries themselves.
type Delivery struct {
	Queue       string
	RoutingKey  string
	MessageID   string
	Type        string
	ContentType string
	Headers     map[string]any
	Body        []byte
	Timestamp   time.Time
	// Redelivered says that this message may have been handled before: the broker's flag, or
	// set by the Consumer when it hands a delivery to the handler again (HoldFor).
	Redelivered bool
	// Received is when the consumer took it from the channel; StartSpan reports the wait
	// since then (a batch filling, every worker busy) as notify.queued_seconds.
	Received time.Time

	raw  amqp.Delivery
	sub  *subscription
	live *atomic.Uint64
}

// Attempt returns the AttemptHeader value, or 0 when the header is missing or not an integer.
func (d *Delivery) Attempt() int {
	switch v := d.Headers[AttemptHeader].(type) {
	case int8:
		return int(v)
	case uint8:
		return int(v)
	case int16:
		return int(v)
	case uint16:
		return int(v)
	case int32:
		return int(v)
	case uint32:
		return int(v)
	case int64:
		return int(v)
	case int:
		return v
	}
	return 0
}

// Run consumes until ctx ends, re-subscribing after every lost channel or connection. When
// ctx ends it cancels the subscription, tells the handlers (Stopping), lets in-flight
// handlers finish (ShutdownTimeout, then their ctx is cancelled and Run waits for them),
// closes the channel so that every delivery not acked goes back to the queue, and returns
// nil. It returns an error only if the Conn stopped for good.
func (c *Consumer) Run(ctx context.Context) error {
	release := c.conn.hold()
	defer release()
	if h := c.conn.opts.Hooks.Consuming; h != nil {
		h(c.queue)
	}

	handlerCtx, cancelHandlers := context.WithCancel(context.WithValue(context.WithoutCancel(ctx), stoppingKey{}, ctx.Done()))
	defer cancelHandlers()
	jobs := make(chan []*Delivery)
	var workers sync.WaitGroup
	for range c.opts.Concurrency {
		workers.Go(func() {
			for batch := range jobs {
				c.busy.Add(1)
				c.handle(handlerCtx, batch)
				c.busy.Add(-1)
			}
		})
	}

	c.down(errors.New("waiting for the broker connection"))
	b := backoff{min: c.conn.opts.MinBackoff, max: c.conn.opts.MaxBackoff}
	var sub *subscription
	var runErr error
	for ctx.Err() == nil {
		var err error
		sub, err = c.subscribe(ctx)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			if errors.Is(err, ErrStopped) {
				runErr = fmt.Errorf("consume %s: %w", c.queue, err)
				break
			}
			c.down(err)
			d := b.next()
			c.log.Warn("rabbitmq subscribe failed", "err", err, "retry_in", d)
			sleep(ctx, d)
			continue
		}
		sub.ctx, sub.cancel = context.WithCancelCause(handlerCtx)
		c.log.Info("rabbitmq consuming", "generation", sub.gen)
		up := time.Now()
		reason := c.deliver(ctx, sub, jobs)
		if ctx.Err() != nil {
			break
		}
		c.live.CompareAndSwap(sub.gen, 0)
		sub.ch.Close()
		if reason == "" {
			reason = "consumer cancelled by the broker"
			select {
			case aerr, ok := <-sub.closed:
				if ok && aerr != nil {
					reason = aerr.Error()
				}
			default:
			}
		}
		// The broker has put back every delivery of the channel: the handlers still working
		// on some stop (their ctx ends), since another consumer gets them now.
		sub.cancel(fmt.Errorf("%w: %s", ErrChannelClosed, reason))
		sub = nil
		c.down(errors.New(reason))
		if time.Since(up) > c.conn.opts.MaxBackoff { // it was up for a while: not a flapping queue
			b.reset()
		}
		d := b.next()
		c.log.Warn("rabbitmq subscription lost", "reason", reason, "resubscribe_in", d)
		sleep(ctx, d)
	}

	if sub != nil {
		if err := sub.ch.Cancel(sub.tag, false); err != nil {
			c.log.Debug("rabbitmq cancel consumer", "err", err)
		}
	}
	close(jobs)
	c.wait(&workers, cancelHandlers)
	c.live.Store(0)
	if sub != nil {
		sub.ch.Close() // the broker requeues whatever was delivered and not acked
		sub.cancel(ErrChannelClosed)
	}
	return runErr
}

// Check reports, without waiting, whether the consumer is subscribed to its queue: nil when
// it is, otherwise an error saying why not. It is a readiness check; a Consumer whose Run has
// not started (or has returned) is not subscribed.
func (c *Consumer) Check(context.Context) error {
	if c.live.Load() != 0 {
		return nil
	}
	c.mu.Lock()
	err := c.downErr
	c.mu.Unlock()
	if err != nil {
		return fmt.Errorf("not consuming %s: %w", c.queue, err)
	}
	return fmt.Errorf("not consuming %s", c.queue)
}

func (c *Consumer) down(err error) {
	c.mu.Lock()
	c.downErr = err
	c.mu.Unlock()
}

// wait waits for the workers, cancelling the handlers' ctx after ShutdownTimeout.
func (c *Consumer) wait(workers *sync.WaitGroup, cancelHandlers context.CancelFunc) {
	done := make(chan struct{})
	go func() {
		workers.Wait()
		close(done)
	}()
	t := time.NewTimer(c.opts.ShutdownTimeout)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		c.log.Warn("rabbitmq handlers still running at shutdown; cancelling them", "shutdown_timeout", c.opts.ShutdownTimeout)
		cancelHandlers()
		<-done
	}
}

type subscription struct {
	ch         *amqp.Channel
	closed     <-chan *amqp.Error
	deliveries <-chan amqp.Delivery
	tag        string
	gen        uint64
	tags       *tags

	// ctx is the handlers' ctx for this channel's deliveries: it ends with cause
	// ErrChannelClosed once the channel is gone (the broker redelivers them to another
	// consumer), as well as when the Consumer cancels its handlers at shutdown.
	ctx    context.Context
	cancel context.CancelCauseFunc
}

func (c *Consumer) subscribe(ctx context.Context) (*subscription, error) {
	ch, err := c.conn.channel(ctx)
	if err != nil {
		return nil, err
	}
	if err := ch.Qos(c.opts.Prefetch, 0, false); err != nil {
		ch.Close()
		return nil, fmt.Errorf("set prefetch %d: %w", c.opts.Prefetch, err)
	}
	closed := ch.NotifyClose(make(chan *amqp.Error, 1))
	gen := c.conn.gen.Add(1)
	tag := fmt.Sprintf("%s.%d", cmp.Or(c.conn.opts.Name, "rabbit"), gen)
	deliveries, err := ch.Consume(c.queue, tag, false, false, false, false, nil)
	if err != nil {
		ch.Close()
		return nil, fmt.Errorf("consume %s: %w", c.queue, err)
	}
	c.live.Store(gen)
	return &subscription{ch: ch, closed: closed, deliveries: deliveries, tag: tag, gen: gen, tags: newTags()}, nil
}

// deliver hands deliveries to the workers in batches until ctx ends or the subscription
// ends (channel or connection closed, or the broker cancelled the consumer). A batch is
// handed over once it is full or BatchLinger after its first delivery (at once with no
// linger), and keeps filling while every worker is busy. Deliveries it holds when it
// returns are left unsettled: closing the channel requeues them. It returns why the
// channel closed when it saw it close ("" otherwise); it watches the channel even while
// every worker is busy, so that their handlers learn of it at once.
func (c *Consumer) deliver(ctx context.Context, sub *subscription, jobs chan<- []*Delivery) (closed string) {
	var batch []*Delivery
	linger := time.NewTimer(0)
	<-linger.C
	defer linger.Stop()
	ready := false // the batch may go: full, lingered long enough, or no linger at all
	for {
		in, out := sub.deliveries, jobs
		if len(batch) >= c.opts.BatchSize {
			in = nil
		}
		if !ready {
			out = nil
		}
		select {
		case <-ctx.Done():
			return ""
		case aerr, ok := <-sub.closed:
			if ok && aerr != nil {
				return aerr.Error()
			}
			return "channel closed"
		case <-linger.C:
			ready = true
		case out <- batch:
			linger.Stop()
			batch, ready = nil, false
		case raw, ok := <-in:
			if !ok {
				return ""
			}
			sub.tags.delivered(raw.DeliveryTag)
			batch = append(batch, &Delivery{
				Queue:       c.queue,
				RoutingKey:  raw.RoutingKey,
				MessageID:   raw.MessageId,
				Type:        raw.Type,
				ContentType: raw.ContentType,
				Headers:     raw.Headers,
				Body:        raw.Body,
				Timestamp:   raw.Timestamp,
				Redelivered: raw.Redelivered,
				Received:    time.Now(),
				raw:         raw,
				sub:         sub,
				live:        &c.live,
			})
			switch {
			case len(batch) >= c.opts.BatchSize || c.opts.BatchLinger <= 0:
				ready = true
			case len(batch) == 1 && c.busy.Load() == 0:
				ready = true // nothing else is being handled: no reason to wait for company
			case len(batch) == 1:
				linger.Reset(c.opts.BatchLinger)
			}
		}
	}
}

// handle runs the handler on a batch and settles each delivery from its error, handing the
// deliveries held for another try (settle) to the handler again until none is left. The
// handler's ctx is its channel's (see subscription.ctx), which ends with the handlers' ctx.
func (c *Consumer) handle(ctx context.Context, batch []*Delivery) {
	for len(batch) > 0 {
		batch = c.settle(ctx, batch, c.call(batch))
	}
}

// call runs the handler once on batch and returns one error per delivery.
func (c *Consumer) call(batch []*Delivery) []error {
	hctx := batch[0].sub.ctx
	if c.opts.HandlerTimeout > 0 {
		var cancel context.CancelFunc
		hctx, cancel = context.WithTimeout(hctx, c.opts.HandlerTimeout)
		defer cancel()
	}
	errs := c.handler(hctx, batch)
	if len(errs) != len(batch) {
		// A handler bug: which answer belongs to which delivery is unknown, so nothing is
		// acked; the whole batch goes back to the queue.
		err := fmt.Errorf("batch handler returned %d errors for %d deliveries", len(errs), len(batch))
		errs = make([]error, len(batch))
		for i := range errs {
			errs[i] = err
		}
	}
	return errs
}
