// Package rabbit is how every notify service talks to RabbitMQ: one connection kept open by
// our own reconnect loop (Conn), publishing with windowed publisher confirms (Publisher),
// consuming with manual acks and prefetch (Consumer), and the queues and exchange derived from
// one definition (Topology).
//
// amqp091-go's own recovery is not used: it is experimental and mishandles delivery tags across
// reconnects. Instead every publisher and consumer opens its own channel on the current
// connection and opens a fresh one after a reconnect. A delivery remembers the channel it came
// from; settling it after that channel died returns ErrChannelClosed and sends nothing, because
// the broker has already put the message back and will deliver it again.
//
// Delivery is at-least-once throughout: a publish whose confirm was lost is reported as failed
// and republished by the caller, and a delivery whose ack was lost is redelivered, so consumers
// dedupe on MessageID.
package rabbit

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"
)

// Routing keys of the topology's exchange. Wait levels use WaitRoutingKey.
const (
	SendKey = "send"
	// PackedSendKey routes packs of send tasks (notify.bus.v1.SendTaskPack) to their own
	// queue, which only senders that read packs consume.
	PackedSendKey = "send.packed"
	RetryKey      = "retry"
	DeadKey       = "dead"
)

// AttemptHeader is the header that carries how many delivery attempts a notification has had.
// It is ours: the broker's x-death headers are never relied on. Read it with Delivery.Attempt.
const AttemptHeader = "x-notify-attempt"

var (
	// ErrChannelClosed means the channel a message or delivery belonged to is gone: an
	// unconfirmed publish must be retried, and a delivery can no longer be settled (the broker
	// redelivers it).
	ErrChannelClosed = errors.New("rabbit: channel closed")

	// ErrUnroutable means a mandatory publish matched no queue and the broker returned it.
	ErrUnroutable = errors.New("rabbit: message unroutable")

	// ErrNacked means the broker refused responsibility for a message (basic.nack), for
	// example because the queue is full and rejects publishes.
	ErrNacked = errors.New("rabbit: message nacked by broker")

	// ErrTopologyMismatch means a queue or exchange exists with different arguments
	// (PRECONDITION_FAILED). Retrying cannot fix it: the definitions must be reconciled.
	ErrTopologyMismatch = errors.New("rabbit: topology does not match the broker's")

	// ErrStopped means Conn.Run has returned, so no connection will be opened again.
	ErrStopped = errors.New("rabbit: connection stopped")
)

// Hooks lets a service count what the package does; NewMetrics returns Hooks that feed
// Prometheus counters. Nil fields are skipped. Hooks run on hot paths: they must be cheap and safe for concurrent use.
type Hooks struct {
	// Connected is called after every successful (re)connection and topology declaration.
	Connected func()
	// Disconnected is called once each time the current connection is lost or closed.
	Disconnected func()
	// Published is called once per published message with its outcome (nil: confirmed).
	Published func(routingKey string, err error)
	// Consuming is called when a Consumer of queue starts running.
	Consuming func(queue string)
	// Settled is called once per delivery after the Consumer settled it, with the broker's
	// answer (ErrChannelClosed: the channel had died and the broker redelivers the message).
	Settled func(d *Delivery, s Settlement, err error)
	// HandledAgain is called each time the Consumer hands a delivery whose handler asked for
	// a requeue to the handler again instead (ConsumerOptions.HoldFor).
	HandledAgain func(d *Delivery)
}

// backoff is a jittered exponential delay: each failure doubles it up to max.
type backoff struct {
	min, max, cur time.Duration
}

// next returns a delay in [cur/2, cur) and doubles cur for the following call.
func (b *backoff) next() time.Duration {
	if b.cur < b.min {
		b.cur = b.min
	}
	d := b.cur/2 + rand.N(b.cur/2+1)
	b.cur = min(2*b.cur, b.max)
	return d
}

func (b *backoff) reset() { b.cur = b.min }

// sleep waits for d or until ctx ends, and reports whether the full time passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
