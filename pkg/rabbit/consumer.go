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
	// 2 × Concurrency.
	Prefetch int
	// HandlerTimeout is each handler's deadline; 0 means none.
	HandlerTimeout time.Duration
	// ShutdownTimeout is how long Run lets in-flight handlers finish after its ctx ends
	// before cancelling their ctx; default 20s (keep it below the Conn's DrainTimeout).
	ShutdownTimeout time.Duration
	// MinRequeuePause and MaxRequeuePause bound the pause before a failed delivery is
	// requeued: it starts at MinRequeuePause, doubles with each consecutive failure up to
	// MaxRequeuePause and starts over after a success. Defaults 250ms and 30s.
	MinRequeuePause, MaxRequeuePause time.Duration
}

// Consumer consumes one queue with manual acks, re-subscribing on a fresh channel after every
// reconnect.
type Consumer struct {
	conn    *Conn
	queue   string
	handler Handler
	opts    ConsumerOptions
	log     *slog.Logger
	pause   pacer

	// live is the generation of the channel currently consuming (0: none). A delivery from
	// any other generation is stale: its channel is gone and the broker will redeliver it.
	live atomic.Uint64

	mu      sync.Mutex
	downErr error // why the last subscription failed or ended, for Check
}

// NewConsumer returns a Consumer of queue on conn; Run starts it.
func NewConsumer(conn *Conn, queue string, h Handler, opts ConsumerOptions) *Consumer {
	opts.Concurrency = max(opts.Concurrency, 1)
	opts.Prefetch = cmp.Or(opts.Prefetch, 2*opts.Concurrency)
	opts.ShutdownTimeout = cmp.Or(opts.ShutdownTimeout, 20*time.Second)
	opts.MinRequeuePause = cmp.Or(opts.MinRequeuePause, 250*time.Millisecond)
	opts.MaxRequeuePause = max(cmp.Or(opts.MaxRequeuePause, 30*time.Second), opts.MinRequeuePause)
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
	// Redelivered is the broker's flag: this message may have been handled before.
	Redelivered bool

	raw  amqp.Delivery
	gen  uint64
	live *atomic.Uint64
}

// ack, requeue and reject settle the delivery on the channel it came from. They return
// ErrChannelClosed, sending nothing, when that channel is gone: the broker has already put
// the message back and will deliver it again, and an ack on a newer channel would settle
// a different message with the same tag.
func (d *Delivery) ack() error     { return d.settle(func() error { return d.raw.Ack(false) }) }
func (d *Delivery) requeue() error { return d.settle(func() error { return d.raw.Nack(false, true) }) }
func (d *Delivery) reject() error  { return d.settle(func() error { return d.raw.Reject(false) }) }

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

func (d *Delivery) settle(op func() error) error {
	if d.live.Load() != d.gen {
		return ErrChannelClosed
	}
	if err := op(); err != nil {
		// The channel or its connection failed under us: the broker will redeliver.
		return fmt.Errorf("%w: %w", ErrChannelClosed, err)
	}
	return nil
}

// Run consumes until ctx ends, re-subscribing after every lost channel or connection. When
// ctx ends it cancels the subscription, tells the handlers (Stopping), lets in-flight
// handlers finish (ShutdownTimeout, then their ctx is cancelled and Run waits for them),
// closes the channel so that every delivery not acked goes back to the queue, and returns
// nil. It returns an error only if the Conn stopped for good.
func (c *Consumer) Run(ctx context.Context) error {
	release := c.conn.hold()
	defer release()

	handlerCtx, cancelHandlers := context.WithCancel(context.WithValue(context.WithoutCancel(ctx), stoppingKey{}, ctx.Done()))
	defer cancelHandlers()
	jobs := make(chan *Delivery)
	var workers sync.WaitGroup
	for range c.opts.Concurrency {
		workers.Go(func() {
			for d := range jobs {
				c.handle(handlerCtx, d)
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
		c.log.Info("rabbitmq consuming", "generation", sub.gen)
		up := time.Now()
		c.deliver(ctx, sub, jobs)
		if ctx.Err() != nil {
			break
		}
		c.live.CompareAndSwap(sub.gen, 0)
		sub.ch.Close()
		reason := "consumer cancelled by the broker"
		select {
		case aerr, ok := <-sub.closed:
			if ok && aerr != nil {
				reason = aerr.Error()
			}
		default:
		}
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
	return &subscription{ch: ch, closed: closed, deliveries: deliveries, tag: tag, gen: gen}, nil
}

// deliver hands deliveries to the workers until ctx ends or the subscription ends (channel
// or connection closed, or the broker cancelled the consumer). A delivery it holds when ctx
// ends is left unsettled: closing the channel requeues it.
func (c *Consumer) deliver(ctx context.Context, sub *subscription, jobs chan<- *Delivery) {
	for {
		select {
		case <-ctx.Done():
			return
		case raw, ok := <-sub.deliveries:
			if !ok {
				return
			}
			d := &Delivery{
				Queue:       c.queue,
				RoutingKey:  raw.RoutingKey,
				MessageID:   raw.MessageId,
				Type:        raw.Type,
				ContentType: raw.ContentType,
				Headers:     raw.Headers,
				Body:        raw.Body,
				Timestamp:   raw.Timestamp,
				Redelivered: raw.Redelivered,
				raw:         raw,
				gen:         sub.gen,
				live:        &c.live,
			}
			select {
			case jobs <- d:
			case <-ctx.Done():
				return
			}
		}
	}
}

// handle runs the handler on d and settles d from its error.
func (c *Consumer) handle(ctx context.Context, d *Delivery) {
	hctx := ctx
	if c.opts.HandlerTimeout > 0 {
		var cancel context.CancelFunc
		hctx, cancel = context.WithTimeout(ctx, c.opts.HandlerTimeout)
		defer cancel()
	}
	c.settle(ctx, d, c.handler(hctx, d))
}
