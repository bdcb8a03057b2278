package rabbit

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Message is one message to publish. It is always published persistent and mandatory.
type Message struct {
	RoutingKey string
	// MessageID is the consumers' dedupe key; it is required.
	MessageID   string
	Type        string // proto full name of the body
	ContentType string
	Headers     map[string]any // AMQP table values: ints, strings, bools, time.Time, []byte, …
	Body        []byte
	Timestamp   time.Time // zero means now
}

// PublisherOptions tunes a Publisher. The zero value is usable.
type PublisherOptions struct {
	// Window is how many messages may be published and not yet confirmed at once, across
	// every goroutine using the Publisher; default 256.
	Window int
	// Optional publishes without the mandatory flag: a message no queue is bound for is
	// dropped by the broker and counts as confirmed. For events (the events exchange), whose
	// subscribers come and go; never for tasks.
	Optional bool
}

// Publisher publishes to one exchange with publisher confirms, on a channel of its own that
// it reopens after the connection or channel is lost. It is safe for concurrent use.
type Publisher struct {
	conn      *Conn
	exchange  string
	mandatory bool
	window    chan struct{} // a slot per unconfirmed message

	mu sync.Mutex                     // serialises opening a channel
	cc atomic.Pointer[confirmChannel] // the current channel; read without mu
}

// NewPublisher returns a Publisher for exchange ("" is the default exchange) on conn.
func NewPublisher(conn *Conn, exchange string, opts PublisherOptions) *Publisher {
	return &Publisher{
		conn:      conn,
		exchange:  exchange,
		mandatory: !opts.Optional,
		window:    make(chan struct{}, cmp.Or(opts.Window, 256)),
	}
}

// PublishError lists the messages of one Publish call that were not confirmed. Each one's
// Err wraps ErrUnroutable, ErrNacked, ErrChannelClosed, ErrStopped or the context's error;
// errors.Is on the PublishError matches any of them. All of them may be republished; only
// ErrUnroutable and ErrNacked are likely to fail again.
type PublishError struct {
	Total  int             // messages passed to Publish
	Failed []FailedMessage // ordered by Index
}

// FailedMessage is one message that was not confirmed.
type FailedMessage struct {
	Index     int // position in the Publish call
	MessageID string
	Err       error
}

func (e *PublishError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "rabbit: %d of %d messages not confirmed", len(e.Failed), e.Total)
	for i, f := range e.Failed {
		if i == 3 {
			fmt.Fprintf(&b, "; …")
			break
		}
		fmt.Fprintf(&b, "; %s: %v", f.MessageID, f.Err)
	}
	return b.String()
}

// Unwrap returns the distinct causes, so errors.Is(err, ErrUnroutable) holds when any
// message was unroutable.
func (e *PublishError) Unwrap() []error {
	var errs []error
	seen := map[string]bool{}
	for _, f := range e.Failed {
		if s := f.Err.Error(); !seen[s] {
			seen[s] = true
			errs = append(errs, f.Err)
		}
	}
	return errs
}

type result struct {
	index int
	err   error
}

// Publish publishes msgs and returns once the broker has confirmed every one of them. At most
// Window messages are unconfirmed at any time; others wait for a slot. A message the broker
// returned as unroutable, nacked, or that was unconfirmed when its channel closed or ctx
// ended makes Publish return a *PublishError naming exactly those messages; the caller
// republishes them (at-least-once: some may have reached the queue after all). A message
// without MessageID or with unsupported header values fails the call before anything is sent.
// A message without a traceparent header carries ctx's trace context, if any
// (Delivery.TraceContext continues it).
func (p *Publisher) Publish(ctx context.Context, msgs ...Message) error {
	for i, m := range msgs {
		if m.MessageID == "" {
			return fmt.Errorf("rabbit: publish: message %d has no MessageID", i)
		}
		if err := amqp.Table(m.Headers).Validate(); err != nil {
			return fmt.Errorf("rabbit: publish: message %s headers: %w", m.MessageID, err)
		}
	}

	results := make(chan result, len(msgs)) // every index reports at most once: sends never block
	outstanding := map[int]bool{}
	var failed []FailedMessage
	fail := func(i int, err error) {
		failed = append(failed, FailedMessage{Index: i, MessageID: msgs[i].MessageID, Err: err})
		if h := p.conn.opts.Hooks.Published; h != nil {
			h(msgs[i].RoutingKey, err)
		}
	}

	// The messages are handed to the client with their connection's socket held, so that
	// they leave in a few writes rather than one each (see heldConn).
	var held *heldConn
	for i, m := range msgs {
		if err := p.publish(ctx, i, m, results, &held); err != nil {
			fail(i, err)
			if ctx.Err() != nil || errors.Is(err, ErrStopped) {
				for j := i + 1; j < len(msgs); j++ {
					fail(j, err)
				}
				break
			}
			continue
		}
		outstanding[i] = true
	}
	release(&held) // before waiting for their confirms

	for len(outstanding) > 0 {
		select {
		case r := <-results:
			delete(outstanding, r.index)
			if h := p.conn.opts.Hooks.Published; h != nil {
				h(msgs[r.index].RoutingKey, r.err)
			}
			if r.err != nil {
				failed = append(failed, FailedMessage{Index: r.index, MessageID: msgs[r.index].MessageID, Err: r.err})
			}
		case <-ctx.Done():
			// Their confirms may still arrive; the channel's dispatcher then frees their slots.
			for i := range outstanding {
				fail(i, fmt.Errorf("waiting for confirm: %w", ctx.Err()))
			}
			outstanding = nil
		}
	}

	if len(failed) == 0 {
		return nil
	}
	slices.SortFunc(failed, func(a, b FailedMessage) int { return a.Index - b.Index })
	return &PublishError{Total: len(msgs), Failed: failed}
}

// publish sends one message once a window slot is free, on the current channel. A message
// that could not be handed to a live channel is tried on the next one, a few times.
//
// *held is the socket this call holds, if any: the message is written into it, and it is
// released before anything that may wait for the broker (a window slot, a new channel).
func (p *Publisher) publish(ctx context.Context, index int, m Message, results chan<- result, held **heldConn) error {
	select {
	case p.window <- struct{}{}:
	default:
		release(held) // the confirms that free a slot may wait for what it holds
		select {
		case p.window <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	pub := amqp.Publishing{
		Headers:      amqp.Table(WithTrace(ctx, m.Headers)),
		ContentType:  m.ContentType,
		DeliveryMode: amqp.Persistent,
		MessageId:    m.MessageID,
		Timestamp:    cmp.Or(m.Timestamp, time.Now()),
		Type:         m.Type,
		Body:         m.Body,
	}
	var err error
	for range 3 {
		cc := p.cc.Load()
		if cc == nil || !cc.open() {
			release(held) // opening a channel waits for the broker
			cc, err = p.channel(ctx)
			if err != nil {
				break
			}
		}
		if *held != cc.held {
			release(held)
			if cc.held != nil {
				cc.held.hold()
				*held = cc.held
			}
		}
		err = cc.publish(ctx, p.exchange, m.RoutingKey, p.mandatory, pub, index, results)
		if !errors.Is(err, ErrChannelClosed) {
			break
		}
	}
	if err != nil {
		<-p.window
	}
	return err
}

// release ends the hold on *held, if any.
func release(held **heldConn) {
	if *held != nil {
		(*held).release()
		*held = nil
	}
}

// channel returns the open confirm-mode channel, opening one when there is none.
func (p *Publisher) channel(ctx context.Context) (*confirmChannel, error) {
	if cc := p.cc.Load(); cc != nil && cc.open() {
		return cc, nil
	}

	for {
		// Wait for a connection without holding mu, so other callers still see their ctx.
		conn, err := p.conn.connection(ctx)
		if err != nil {
			return nil, err
		}
		p.mu.Lock()
		if cc := p.cc.Load(); cc != nil && cc.open() {
			p.mu.Unlock()
			return cc, nil
		}
		cc, err := openConfirmChannel(conn, p.conn.heldOf(conn), p.window)
		if err == nil {
			p.cc.Store(cc)
		}
		p.mu.Unlock()
		if err == nil {
			return cc, nil
		}
		if !conn.IsClosed() {
			return nil, err
		}
		p.conn.lost(conn)
	}
}

// confirmChannel is one channel in confirm mode plus the messages awaiting its confirms.
//
// Returns carry no delivery tag, so they are matched to messages by MessageID, exchange and
// routing key. The broker sends a message's basic.return before its basic.ack, and amqp091-go
// hands both to listeners from its single reader goroutine, so by the time the dispatcher
// receives an ack, the return for that message is already in the returns buffer: the
// dispatcher drains returns before settling each confirm. Two messages in flight with the same
// MessageID, exchange and key are interchangeable here.
type confirmChannel struct {
	ch     *amqp.Channel
	held   *heldConn // its connection's socket; nil if that connection was already replaced
	window chan struct{}

	mu       sync.Mutex
	err      error // set once the channel is gone
	pending  map[uint64]inflight
	returned map[returnKey][]string // reply texts of returns not yet matched to their ack
}

type inflight struct {
	key     returnKey
	index   int
	results chan<- result
}

type returnKey struct{ messageID, exchange, routingKey string }

func openConfirmChannel(conn *amqp.Connection, held *heldConn, window chan struct{}) (*confirmChannel, error) {
	ch, err := conn.Channel()
	if err != nil {
		return nil, fmt.Errorf("open publisher channel: %w", err)
	}
	if err := ch.Confirm(false); err != nil {
		ch.Close()
		return nil, fmt.Errorf("enable publisher confirms: %w", err)
	}
	// Buffers hold a full window: amqp091-go gives up on a listener that blocks it for 5s, and
	// the dispatcher may briefly wait for mu while a publisher holds it.
	n := cap(window)
	confirms := ch.NotifyPublish(make(chan amqp.Confirmation, n))
	returns := ch.NotifyReturn(make(chan amqp.Return, n))
	closes := ch.NotifyClose(make(chan *amqp.Error, 1))
	cc := &confirmChannel{
		ch:       ch,
		held:     held,
		window:   window,
		pending:  map[uint64]inflight{},
		returned: map[returnKey][]string{},
	}
	go cc.dispatch(confirms, returns, closes)
	return cc, nil
}

func (cc *confirmChannel) open() bool {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.err == nil && !cc.ch.IsClosed()
}

// publish sends one message and registers it for its confirm. mu is held across the send so
// the dispatcher cannot see the confirm before the message is registered.
func (cc *confirmChannel) publish(ctx context.Context, exchange, key string, mandatory bool, pub amqp.Publishing, index int, results chan<- result) error {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.err != nil {
		return cc.err
	}
	dc, err := cc.ch.PublishWithDeferredConfirmWithContext(ctx, exchange, key, mandatory, false, pub)
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return ctxErr
		}
		// Headers were validated up front, so the channel or its connection failed.
		return fmt.Errorf("%w: %w", ErrChannelClosed, err)
	}
	if dc == nil {
		return errors.New("rabbit: channel not in confirm mode")
	}
	cc.pending[dc.DeliveryTag] = inflight{
		key:     returnKey{pub.MessageId, exchange, key},
		index:   index,
		results: results,
	}
	return nil
}

// dispatch settles confirms until the channel closes, then fails whatever is still pending.
func (cc *confirmChannel) dispatch(confirms <-chan amqp.Confirmation, returns <-chan amqp.Return, closes <-chan *amqp.Error) {
	for {
		select {
		case r, ok := <-returns:
			if !ok {
				returns = nil
				continue
			}
			cc.noteReturn(r)
		case c, ok := <-confirms:
			if !ok {
				cc.fail(closes)
				return
			}
			for drained := false; !drained; {
				select {
				case r, ok := <-returns:
					if !ok {
						returns, drained = nil, true
						continue
					}
					cc.noteReturn(r)
				default:
					drained = true
				}
			}
			cc.settle(c)
		}
	}
}

func (cc *confirmChannel) noteReturn(r amqp.Return) {
	k := returnKey{r.MessageId, r.Exchange, r.RoutingKey}
	cc.mu.Lock()
	cc.returned[k] = append(cc.returned[k], fmt.Sprintf("%d %s", r.ReplyCode, r.ReplyText))
	cc.mu.Unlock()
}

func (cc *confirmChannel) settle(c amqp.Confirmation) {
	cc.mu.Lock()
	m, ok := cc.pending[c.DeliveryTag]
	delete(cc.pending, c.DeliveryTag)
	var err error
	if texts := cc.returned[m.key]; ok && len(texts) > 0 {
		err = fmt.Errorf("%w: exchange %q, routing key %q: %s", ErrUnroutable, m.key.exchange, m.key.routingKey, texts[0])
		if len(texts) == 1 {
			delete(cc.returned, m.key)
		} else {
			cc.returned[m.key] = texts[1:]
		}
	}
	cc.mu.Unlock()
	if !ok {
		return
	}
	if !c.Ack {
		err = ErrNacked
	}
	m.results <- result{index: m.index, err: err}
	<-cc.window
}

// fail reports every pending message as failed with the channel's close reason.
func (cc *confirmChannel) fail(closes <-chan *amqp.Error) {
	err := ErrChannelClosed
	select {
	case aerr, ok := <-closes:
		if ok && aerr != nil {
			err = fmt.Errorf("%w: %w", ErrChannelClosed, aerr)
		}
	default:
	}
	cc.mu.Lock()
	cc.err = err
	pending := cc.pending
	cc.pending = nil
	cc.returned = nil
	cc.mu.Unlock()
	for _, m := range pending {
		m.results <- result{index: m.index, err: err}
		<-cc.window
	}
}
