package rabbit

import (
	"context"
	"errors"
	"sync"
	"time"
)

// Handler processes one delivery; the Consumer settles the delivery from what it returns:
//
//   - nil: ack. The message is done with.
//   - an error wrapping Requeue: the message goes back to the queue after a pause, because
//     something it needs (the database, the broker) failed and may recover. The pause
//     doubles with each consecutive failure of the consumer and starts over after a success
//     (ConsumerOptions.MinRequeuePause, MaxRequeuePause), so an outage neither spins the
//     handlers nor runs healthy messages into the queue's x-delivery-limit. While the
//     consumer is stopping there is no pause: the next consumer takes the message over.
//   - an error wrapping Reject: the message is rejected to the queue's dead-letter route.
//   - any other error: requeued with the pause like Requeue, but logged as an error, since
//     the handler did not say what the failure means. A message that fails for good this
//     way ends on the dead-letter route after x-delivery-limit redeliveries.
//
// ctx ends at ConsumerOptions.HandlerTimeout, or when shutdown stops waiting for in-flight
// handlers; Stopping(ctx) closes when the consumer starts to stop.
type Handler func(ctx context.Context, d *Delivery) error

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

// settle acks, requeues or rejects d according to the handler's err and logs what went
// wrong. ctx is the handlers' ctx: the pause before a requeue ends early when it ends or
// when the consumer starts to stop.
func (c *Consumer) settle(ctx context.Context, d *Delivery, err error) {
	s := SettlementOf(err)
	log := c.log.With("message_id", d.MessageID)
	var settleErr error
	switch s {
	case Acked:
		c.pause.succeeded()
		settleErr = d.ack()
	case Rejected:
		log.Error("rejecting message to the queue's dead-letter route", "err", err)
		settleErr = d.reject()
	default:
		stopping := Stopping(ctx)
		select {
		case <-stopping:
			log.Info("consumer stopping; handing message back to the queue", "err", err)
		default:
			pause := c.pause.failed()
			if _, ok := errors.AsType[*settleError](err); ok {
				log.Warn("handing message back to the queue", "err", err, "pause", pause)
			} else {
				log.Error("handler failed; handing message back to the queue", "err", err, "pause", pause)
			}
			t := time.NewTimer(pause)
			select {
			case <-t.C:
			case <-stopping:
			case <-ctx.Done():
			}
			t.Stop()
		}
		settleErr = d.requeue()
	}
	if h := c.conn.opts.Hooks.Settled; h != nil {
		h(d, s, settleErr)
	}
	if settleErr != nil {
		log.Warn("could not settle message; the broker will redeliver it", "settlement", s, "err", settleErr)
	}
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
