package rabbit

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Handler processes one delivery; the Consumer settles the delivery from what it returns:
//
//   - nil: ack. The message is done with.
//   - an error wrapping Requeue: the message is tried again after a pause, because
//     something it needs (the database, the broker) failed and may recover. The pause
//     doubles with each consecutive failure of the consumer and starts over after a success
//     (ConsumerOptions.MinRequeuePause, MaxRequeuePause), so an outage does not spin the
//     handlers. For HoldFor after it was received the message stays unacked and is handed
//     to the handler again (Redelivered set); after that it goes back to the queue, which
//     spends one of the queue's x-delivery-limit redeliveries, so an outage of hours does
//     not run healthy messages into the limit. While the consumer is stopping there is no
//     pause: the message goes back at once and the next consumer takes it over.
//   - an error wrapping Reject: the message is rejected to the queue's dead-letter route.
//   - any other error: requeued with the pause like Requeue, but logged as an error, since
//     the handler did not say what the failure means. A message that fails for good this
//     way ends on the dead-letter route after x-delivery-limit redeliveries.
//
// ctx ends at ConsumerOptions.HandlerTimeout, when shutdown stops waiting for in-flight
// handlers, and as soon as the delivery's channel or connection closes: the broker then
// redelivers the message to another consumer and nothing the handler returns can settle it,
// so the handler must stop sending at once (context.Cause(ctx) wraps ErrChannelClosed). What
// already happened may still be recorded under a ctx of its own (context.WithoutCancel with
// a short timeout), so that the next consumer skips it. Stopping(ctx) closes when the
// consumer starts to stop.
type Handler func(ctx context.Context, d *Delivery) error

// BatchHandler processes deliveries taken from the queue together (NewBatchConsumer) and
// returns one error per delivery, in the same order: each delivery is settled from its own
// error exactly as a Handler's, so one failed message of a batch never requeues the
// others. The acks of a batch go out first, the rejects with them, and the requeues after
// one shared pause (those held are handed to the handler again together);
// consecutive acked deliveries are acked with one multiple-ack when no
// delivery before them is still unsettled on the channel.
//
// ctx is as for a Handler, with HandlerTimeout bounding the whole batch.
type BatchHandler func(ctx context.Context, ds []*Delivery) []error

// Settlement is what a Consumer did with a delivery.
type Settlement string

// Settlements, as Hooks.Settled reports them. The values double as metric labels.
const (
	Acked    Settlement = "acked"
	Requeued Settlement = "requeued"
	Rejected Settlement = "rejected"
)

// settleError carries a handler's verdict on a message along with the failure behind it.
type settleError struct {
	s   Settlement
	err error
}

func (e *settleError) Error() string {
	if e.err == nil {
		return string(e.s)
	}
	return e.err.Error()
}

func (e *settleError) Unwrap() error { return e.err }

// Requeue marks err as a failure that may pass: the Consumer puts the message back on its
// queue after a pause. Requeue(nil) requeues without a cause.
func Requeue(err error) error { return &settleError{s: Requeued, err: err} }

// Reject marks err as a reason never to deliver the message again: the Consumer rejects it
// to the queue's dead-letter route. Reject(nil) rejects without a cause.
func Reject(err error) error { return &settleError{s: Rejected, err: err} }

// SettlementOf returns how a Consumer settles a delivery whose handler returned err.
func SettlementOf(err error) Settlement {
	if err == nil {
		return Acked
	}
	if se, ok := errors.AsType[*settleError](err); ok {
		return se.s
	}
	return Requeued
}

type stoppingKey struct{}

// Stopping returns a channel that closes when the Consumer running the handler that got ctx
// starts to stop: a long handler stops starting new work and returns (Requeue hands the
// rest to the next consumer). Outside a Consumer it returns nil, a channel that never
// closes.
func Stopping(ctx context.Context) <-chan struct{} {
	ch, _ := ctx.Value(stoppingKey{}).(<-chan struct{})
	return ch
}

// settle acks, requeues or rejects each delivery of a batch according to its error and
// logs what went wrong. The acks and rejects go out at once. The deliveries to requeue wait
// one pause (see Handler); those received less than HoldFor ago are then returned, to be
// handed to the handler again, still unacked, and the others are requeued. ctx is the
// handlers' ctx: the pause ends early when it ends or when the consumer starts to stop, and
// then every delivery to requeue is requeued.
func (c *Consumer) settle(ctx context.Context, batch []*Delivery, errs []error) (again []*Delivery) {
	var acks, rejects, requeues []int
	for i, err := range errs {
		switch SettlementOf(err) {
		case Acked:
			acks = append(acks, i)
		case Rejected:
			rejects = append(rejects, i)
			c.log.Error("rejecting message to the queue's dead-letter route", "message_id", batch[i].MessageID, "err", err)
		default:
			requeues = append(requeues, i)
		}
	}
	if len(acks) > 0 {
		c.pause.succeeded()
	}
	c.settled(batch, acks, Acked, batch[0].sub.tags.ack(batch, acks))
	c.settled(batch, rejects, Rejected, batch[0].sub.tags.each(batch, rejects, func(d *Delivery) error { return d.raw.Reject(false) }))
	if len(requeues) == 0 {
		return nil
	}
	if !live(batch[0]) {
		// The channel is gone and the broker has put the messages back already: no pause
		// (the failure was the channel's, not the handler's), nothing sent.
		c.settled(batch, requeues, Requeued, batch[0].sub.tags.each(batch, requeues, func(*Delivery) error { return ErrChannelClosed }))
		return nil
	}
	stopping := Stopping(ctx)
	var hold []int
	select {
	case <-stopping:
		for _, i := range requeues {
			c.log.Info("consumer stopping; handing message back to the queue", "message_id", batch[i].MessageID, "err", errs[i])
		}
	default:
		pause := c.pause.failed()
		var back []int
		for _, i := range requeues {
			if time.Since(batch[i].Received) < c.opts.HoldFor-pause {
				hold = append(hold, i)
			} else {
				back = append(back, i)
			}
		}
		c.logRequeues(batch, errs, hold, "handling message again after a pause; it stays unacked, so the queue's delivery limit is not spent", pause)
		c.logRequeues(batch, errs, back, "handing message back to the queue after a pause", pause)
		t := time.NewTimer(pause)
		select {
		case <-t.C:
		case <-stopping:
			hold = nil
		case <-ctx.Done():
			hold = nil
		}
		t.Stop()
		if !live(batch[0]) {
			hold = nil // the broker has put them back: each below finds its channel closed
		}
		if len(hold) > 0 {
			requeues = back // hold and back split requeues; with nothing held, all go back
		}
	}
	c.settled(batch, requeues, Requeued, batch[0].sub.tags.each(batch, requeues, func(d *Delivery) error { return d.raw.Nack(false, true) }))
	for _, i := range hold {
		d := batch[i]
		d.Redelivered = true
		if h := c.conn.opts.Hooks.HandledAgain; h != nil {
			h(d)
		}
		again = append(again, d)
	}
	return again
}

// logRequeues logs, for each of batch[idx], what happens to it (msg) and why: a Requeue is
// expected trouble (a warning), any other error a handler failure.
func (c *Consumer) logRequeues(batch []*Delivery, errs []error, idx []int, msg string, pause time.Duration) {
	for _, i := range idx {
		if _, ok := errors.AsType[*settleError](errs[i]); ok {
			c.log.Warn(msg, "message_id", batch[i].MessageID, "err", errs[i], "pause", pause)
		} else {
			c.log.Error("handler failed; "+msg, "message_id", batch[i].MessageID, "err", errs[i], "pause", pause)
		}
	}
}

// settled reports the settlement of batch[idx] (errs[k] is the broker's answer for
// batch[idx[k]]) to the hook and logs what could not be settled.
func (c *Consumer) settled(batch []*Delivery, idx []int, s Settlement, errs []error) {
	for k, i := range idx {
		d := batch[i]
		if h := c.conn.opts.Hooks.Settled; h != nil {
			h(d, s, errs[k])
		}
		if errs[k] != nil {
			c.log.Warn("could not settle message; the broker will redeliver it", "message_id", d.MessageID, "settlement", s, "err", errs[k])
		}
	}
}

// tags keeps one channel's settlements in step with the broker's view of them, so that an
// ack with multiple set settles nothing but the deliveries it is meant for: it acks every
// unsettled delivery up to its tag, including those other handlers still hold. pending
// holds the tags delivered and not yet settled (at most Prefetch of them). Settlements are
// sent under mu, so the broker sees them in the order they are recorded here.
type tags struct {
	mu      sync.Mutex
	pending map[uint64]struct{}
}

func newTags() *tags { return &tags{pending: map[uint64]struct{}{}} }

// delivered records a tag the consumer received.
func (t *tags) delivered(tag uint64) {
	t.mu.Lock()
	t.pending[tag] = struct{}{}
	t.mu.Unlock()
}

// pendingBelowLocked reports whether a delivery with a tag below tag is unsettled.
func (t *tags) pendingBelowLocked(tag uint64) bool {
	for p := range t.pending {
		if p < tag {
			return true
		}
	}
	return false
}

// live reports whether the deliveries' channel is still the consumer's: a settlement on a
// newer channel would settle a different message with the same tag, and the broker has
// already put the message back.
func live(d *Delivery) bool { return d.live.Load() == d.sub.gen }

// channelErr marks a failed settlement: the channel or its connection failed under us, and
// the broker will redeliver.
func channelErr(err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%w: %w", ErrChannelClosed, err)
}

// each settles batch[i] for every i in idx with op, one delivery at a time, and returns the
// broker's answer for each.
func (t *tags) each(batch []*Delivery, idx []int, op func(*Delivery) error) []error {
	errs := make([]error, len(idx))
	if len(idx) == 0 {
		return errs
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for k, i := range idx {
		d := batch[i]
		if !live(d) {
			errs[k] = ErrChannelClosed
			continue
		}
		errs[k] = channelErr(op(d))
		delete(t.pending, d.raw.DeliveryTag)
	}
	return errs
}

// ack acks batch[i] for every i in idx (in increasing tag order, as a batch is taken from
// the queue). A run of consecutive tags with no unsettled delivery below it is acked with
// one multiple-ack; any other delivery alone.
func (t *tags) ack(batch []*Delivery, idx []int) []error {
	errs := make([]error, len(idx))
	if len(idx) == 0 {
		return errs
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for k := 0; k < len(idx); {
		d := batch[idx[k]]
		if !live(d) {
			errs[k] = ErrChannelClosed
			k++
			continue
		}
		// The run of consecutive tags from idx[k]; a multiple-ack covers it only when no
		// delivery below it is unsettled.
		end := k + 1
		for end < len(idx) && batch[idx[end]].raw.DeliveryTag == batch[idx[end-1]].raw.DeliveryTag+1 {
			end++
		}
		if end-k == 1 || t.pendingBelowLocked(d.raw.DeliveryTag) {
			errs[k] = channelErr(d.raw.Ack(false))
			delete(t.pending, d.raw.DeliveryTag)
			k++
			continue
		}
		err := channelErr(batch[idx[end-1]].raw.Ack(true))
		for ; k < end; k++ {
			errs[k] = err
			delete(t.pending, batch[idx[k]].raw.DeliveryTag)
		}
	}
	return errs
}

// pacer paces requeues while something the handlers depend on keeps failing: without the
// pause a requeued message comes straight back, the handlers spin, and the queue's
// x-delivery-limit dead-letters healthy messages during a short database outage. It is
// shared by every handler of a Consumer, since they all depend on the same things.
type pacer struct {
	min, max time.Duration

	mu       sync.Mutex
	failures int
}

// failed returns the pause before the next requeue: min doubled for each consecutive
// failure before this one, at most max.
func (p *pacer) failed() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	pause := min(p.min<<min(p.failures, 16), p.max)
	p.failures++
	return pause
}

func (p *pacer) succeeded() {
	p.mu.Lock()
	p.failures = 0
	p.mu.Unlock()
}
