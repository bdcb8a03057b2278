package rabbit

import (
	"errors"
	"fmt"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Topology is the one definition of notify's exchange and queues; every name is derived from
// Name, so tests use a unique Name and never collide with each other or with a running system.
//
// With Name "notify" it declares:
//
//	exchange notify (direct, durable)
//	notify.send   ← key "send"   quorum, x-delivery-limit, dead-letters to key "dead"
//	notify.send.packed ← key "send.packed", as notify.send without a delivery limit (packs of send tasks)
//	notify.retry  ← key "retry"  quorum, x-delivery-limit, dead-letters to key "dead"
//	notify.dead   ← key "dead"   quorum, no delivery limit
//	notify.wait.10s ← key "wait.10s", quorum, x-message-ttl 10000, dead-letters to key "retry"
//	… one wait queue per entry of WaitDelays
//
// Dead-lettering is at-least-once (x-dead-letter-strategy, which needs x-overflow=reject-publish),
// so a message moving from a wait queue to the retry queue, or into the dead queue, is never
// dropped on the way. Wait queues are named by their delay: changing the delays declares new
// queues instead of clashing with the old ones, which drain into retry by themselves. TTL is
// per queue, never per message, because TTL only expires messages at the head of a queue.
type Topology struct {
	Name string
	// WaitDelays are the wait levels, strictly increasing; see WaitDelays.
	WaitDelays []time.Duration
	// DeliveryLimit is x-delivery-limit on the send and retry queues: a message redelivered
	// more often than this (a consumer crash loop) is dead-lettered. 0 means no limit.
	DeliveryLimit int
}

// WaitDelays returns the wait levels base, 2·base, 4·base, … up to and including max: with
// 10s and 320s that is 10, 20, 40, 80, 160, 320 seconds. When max is not on the doubling
// series it is the last level (10s, 300s ends 160s, 300s). Attempts past the last level reuse
// it (see Topology.WaitLevel). A max below base is treated as base; base ≤ 0 yields nil.
func WaitDelays(base, max time.Duration) []time.Duration {
	if base <= 0 {
		return nil
	}
	max = maxDuration(max, base)
	var delays []time.Duration
	for d := base; d < max; d *= 2 {
		delays = append(delays, d)
	}
	return append(delays, max)
}

func maxDuration(a, b time.Duration) time.Duration {
	if a > b {
		return a
	}
	return b
}

// Exchange returns the name of the topology's direct exchange.
func (t Topology) Exchange() string { return t.Name }

// EventsExchange returns the name of the topology's topic exchange for status events
// (notify.bus.v1.StatusEvent, routing key "<status>.<type>"): domain services bind their
// own queues to it.
func (t Topology) EventsExchange() string { return t.Name + ".events" }

// SendQueue returns the name of the queue fresh notifications are published to.
func (t Topology) SendQueue() string { return t.Name + "." + SendKey }

// PackedSendQueue returns the name of the queue the relay publishes packs of send tasks to
// (notify.bus.v1.SendTaskPack). A queue of its own, not the send queue: a sender of a
// version that reads no packs never receives one, so producers and senders may be upgraded
// in any order (the packs wait for the first sender that reads them).
func (t Topology) PackedSendQueue() string { return t.Name + "." + PackedSendKey }

// RetryQueue returns the name of the queue expired wait-queue messages land on.
func (t Topology) RetryQueue() string { return t.Name + "." + RetryKey }

// DeadQueue returns the name of the queue for messages that will not be retried.
func (t Topology) DeadQueue() string { return t.Name + "." + DeadKey }

// WaitRoutingKey returns the routing key of wait level i (an index into WaitDelays).
func (t Topology) WaitRoutingKey(level int) string {
	return "wait." + formatDelay(t.WaitDelays[level])
}

// WaitQueue returns the name of the queue of wait level i (an index into WaitDelays).
func (t Topology) WaitQueue(level int) string {
	return t.Name + "." + t.WaitRoutingKey(level)
}

// WaitLevel returns the wait level (an index into WaitDelays) for a message that failed its
// attempt-th delivery attempt (1 for the first failure): the attempt-th level, the last one
// for attempts beyond it, raised when needed to the first level that waits at least
// retryAfter (a server's Retry-After; 0 when it sent none). A retryAfter beyond the last level
// gets the last level. It returns -1 when the topology has no wait levels.
func (t Topology) WaitLevel(attempt int, retryAfter time.Duration) int {
	n := len(t.WaitDelays)
	if n == 0 {
		return -1
	}
	level := min(max(attempt-1, 0), n-1)
	for level < n-1 && t.WaitDelays[level] < retryAfter {
		level++
	}
	return level
}

// Queues returns the name of every queue the topology declares.
func (t Topology) Queues() []string {
	qs := []string{t.SendQueue(), t.PackedSendQueue(), t.RetryQueue(), t.DeadQueue()}
	for i := range t.WaitDelays {
		qs = append(qs, t.WaitQueue(i))
	}
	return qs
}

// RetryQueues returns the retry queue and every wait queue: the queues the retrier owns.
func (t Topology) RetryQueues() []string {
	qs := []string{t.RetryQueue()}
	for i := range t.WaitDelays {
		qs = append(qs, t.WaitQueue(i))
	}
	return qs
}

// formatDelay is time.Duration.String without the zero units it appends: 5m20s, 10m, 1h, 200ms.
func formatDelay(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// validate reports every problem with the definition at once.
func (t Topology) validate() error {
	var errs []error
	if t.Name == "" {
		errs = append(errs, errors.New("topology: empty name"))
	}
	if t.DeliveryLimit < 0 {
		errs = append(errs, fmt.Errorf("topology %s: negative delivery limit %d", t.Name, t.DeliveryLimit))
	}
	for i, d := range t.WaitDelays {
		switch {
		case d < time.Millisecond || d%time.Millisecond != 0:
			errs = append(errs, fmt.Errorf("topology %s: wait delay %v is not a positive whole number of milliseconds", t.Name, d))
		case i > 0 && d <= t.WaitDelays[i-1]:
			errs = append(errs, fmt.Errorf("topology %s: wait delays must increase, %v follows %v", t.Name, d, t.WaitDelays[i-1]))
		}
	}
	return errors.Join(errs...)
}

type queueSpec struct {
	name string
	key  string
	args amqp.Table
}

// queues returns every queue with its binding key and arguments. Numbers are int64: amqp091-go
// encodes a Go int as a 32-bit field, and any other client declaring these queues must send
// numbers too (the broker accepts another integer width as equivalent, but not a string "20").
func (t Topology) queues() []queueSpec {
	deadLettered := func(key string) amqp.Table {
		return amqp.Table{
			"x-queue-type":              "quorum",
			"x-dead-letter-exchange":    t.Exchange(),
			"x-dead-letter-routing-key": key,
			"x-dead-letter-strategy":    "at-least-once",
			"x-overflow":                "reject-publish",
		}
	}
	work := func(name, key string) queueSpec {
		args := deadLettered(DeadKey)
		if t.DeliveryLimit > 0 {
			args["x-delivery-limit"] = int64(t.DeliveryLimit)
		}
		return queueSpec{name: name, key: key, args: args}
	}
	qs := []queueSpec{
		work(t.SendQueue(), SendKey),
		// No delivery limit: a pack that comes back is dissolved into tasks on the send queue
		// without being handled (the sender's HandlePacks), so it cannot crash-loop; its
		// tasks meet the send queue's limit on their own.
		{name: t.PackedSendQueue(), key: PackedSendKey, args: deadLettered(DeadKey)},
		work(t.RetryQueue(), RetryKey),
		{name: t.DeadQueue(), key: DeadKey, args: amqp.Table{"x-queue-type": "quorum"}},
	}
	for i, d := range t.WaitDelays {
		args := deadLettered(RetryKey)
		args["x-message-ttl"] = d.Milliseconds()
		qs = append(qs, queueSpec{name: t.WaitQueue(i), key: t.WaitRoutingKey(i), args: args})
	}
	return qs
}

// declare declares the exchange, queues and bindings on a channel of its own (a failed
// declaration closes the channel). Declaring an identical topology again is a no-op; a queue
// that exists with other arguments fails with ErrTopologyMismatch and the queue's name.
func (t Topology) declare(conn *amqp.Connection) error {
	if err := t.validate(); err != nil {
		return err
	}
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("open channel to declare topology %s: %w", t.Name, err)
	}
	defer ch.Close()

	if err := ch.ExchangeDeclare(t.Exchange(), amqp.ExchangeDirect, true, false, false, false, nil); err != nil {
		return fmt.Errorf("declare exchange %s: %w", t.Exchange(), classify(err))
	}
	if err := ch.ExchangeDeclare(t.EventsExchange(), amqp.ExchangeTopic, true, false, false, false, nil); err != nil {
		return fmt.Errorf("declare exchange %s: %w", t.EventsExchange(), classify(err))
	}
	for _, q := range t.queues() {
		if _, err := ch.QueueDeclare(q.name, true, false, false, false, q.args); err != nil {
			return fmt.Errorf("declare queue %s: %w", q.name, classify(err))
		}
		if err := ch.QueueBind(q.name, q.key, t.Exchange(), false, nil); err != nil {
			return fmt.Errorf("bind queue %s to %s with key %s: %w", q.name, t.Exchange(), q.key, classify(err))
		}
	}
	return nil
}

// classify marks a PRECONDITION_FAILED answer as ErrTopologyMismatch, keeping the broker's
// text (which names the differing argument).
func classify(err error) error {
	var aerr *amqp.Error
	if errors.As(err, &aerr) && aerr.Code == amqp.PreconditionFailed {
		return fmt.Errorf("%w: %w", ErrTopologyMismatch, err)
	}
	return err
}

// DefaultName is the production topology's name: the exchange, and the prefix of every
// queue (AMQP_TOPOLOGY overrides it, e.g. to run several environments on one broker).
const DefaultName = "notify"

// DefaultDeliveryLimit is x-delivery-limit on the send and retry queues. Every service
// declares the same value: the broker refuses a queue redeclared with another.
const DefaultDeliveryLimit = 20

// NewTopology returns notify's topology under name (DefaultName when empty) with the given
// wait levels. Services that never publish to a wait queue (the producer, deadletter) pass
// nil and declare only the exchange and the send, retry and dead queues.
func NewTopology(name string, waitDelays []time.Duration) Topology {
	if name == "" {
		name = DefaultName
	}
	return Topology{Name: name, WaitDelays: waitDelays, DeliveryLimit: DefaultDeliveryLimit}
}
