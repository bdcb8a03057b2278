package rabbit

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"notify/pkg/testenv"
)

// TestForcedClose kills every connection of the test through the management API, twice, while
// a producer publishes and a consumer acks. Every message must be consumed at least once, the
// consumer must re-subscribe by itself, and acking a delivery from the dead channel must return
// ErrChannelClosed.
func TestForcedClose(t *testing.T) {
	t.Parallel()
	amqpURL := testenv.AMQPURL(t)
	testenv.ManagementURL(t)
	topo := newTopology(t, amqpURL)

	// The first delivery is held unacked until its channel has been killed and replaced; the
	// consumer's ack of it must then fail with ErrChannelClosed. Every other delivery counts
	// as consumed once its ack was sent.
	got := newSeen()
	var ackErrs atomic.Int64
	held := make(chan *Delivery, 1)
	var heldDelivery atomic.Pointer[Delivery]
	release := make(chan struct{})
	heldErr := make(chan error, 1)
	var holdOnce sync.Once
	var connects atomic.Int32
	connected := func() { connects.Add(1) }
	settled := func(d *Delivery, s Settlement, err error) {
		if s != Acked {
			t.Errorf("delivery %s settled with %s, want %s", d.MessageID, s, Acked)
		}
		if d == heldDelivery.Load() {
			heldErr <- err
			return
		}
		if err != nil {
			if !errors.Is(err, ErrChannelClosed) {
				t.Errorf("ack %s: %v, want nil or ErrChannelClosed", d.MessageID, err)
			}
			ackErrs.Add(1)
			return
		}
		got.add(d.MessageID)
	}
	pubConn := startConn(t, amqpURL, ConnOptions{Name: topo.Name + ".pub", Topology: &topo, Hooks: Hooks{Connected: connected}})
	subConn := startConn(t, amqpURL, ConnOptions{Name: topo.Name + ".sub", Topology: &topo, Hooks: Hooks{Connected: connected, Settled: settled}})
	pub := NewPublisher(pubConn, topo.Exchange(), PublisherOptions{Window: 256})

	startConsumer(t, subConn, topo.SendQueue(), func(ctx context.Context, d *Delivery) error {
		first := false
		holdOnce.Do(func() { first = true })
		if first {
			heldDelivery.Store(d)
			held <- d
			<-release
		}
		return nil
	}, ConsumerOptions{Concurrency: 4, Prefetch: 200})
	releaseHeld := sync.OnceFunc(func() { close(release) })
	t.Cleanup(releaseHeld) // runs before the consumer stops, should the test fail early

	// Learn the connections' broker names first: the management API lists them late.
	firstConns := findConnections(t, topo.Name, 2, nil)

	// The producer is paced (a batch of 1000 every 600ms) so the stream outlasts both kills, and
	// it announces each batch so that a kill lands while that batch awaits its confirms.
	const n, batch = 20_000, 1000
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	var retried atomic.Int64
	batchStarted := make(chan struct{})
	produced := make(chan error, 1)
	producerDone := make(chan struct{})
	t.Cleanup(func() { cancel(); <-producerDone }) // no logging after the test, should it fail early
	go func() {
		defer close(producerDone)
		defer close(batchStarted)
		msgs := messages("m", n, SendKey, []byte("payload"))
		tick := time.NewTicker(600 * time.Millisecond)
		defer tick.Stop()
		for i := 0; i < n; i += batch {
			<-tick.C
			select {
			case batchStarted <- struct{}{}:
			default:
			}
			pending := msgs[i:min(i+batch, n)]
			for len(pending) > 0 {
				err := pub.Publish(ctx, pending...)
				if err == nil {
					break
				}
				var perr *PublishError
				if !errors.As(err, &perr) {
					produced <- err
					return
				}
				var again []Message
				for _, f := range perr.Failed {
					if !errors.Is(f.Err, ErrChannelClosed) {
						produced <- fmt.Errorf("message %s: %w, want ErrChannelClosed", f.MessageID, f.Err)
						return
					}
					again = append(again, pending[f.Index])
				}
				t.Logf("retrying %d of %d messages: %v", len(again), len(pending), perr.Failed[0].Err)
				retried.Add(int64(len(again)))
				pending = again
			}
		}
		produced <- nil
	}()

	var d *Delivery
	select {
	case d = <-held:
	case <-ctx.Done():
		t.Fatal("no delivery arrived")
	}

	kill := func(names []string, atUnique int) {
		t.Helper()
		waitFor(t, 30*time.Second, fmt.Sprintf("%d messages consumed", atUnique), func() bool { return got.unique() >= atUnique })
		if _, ok := <-batchStarted; !ok {
			t.Fatalf("the producer finished before the kill at %d consumed: nothing was tested", got.unique())
		}
		before := connects.Load()
		closeConnections(t, names)
		t.Logf("killed both connections at %d consumed", got.unique())
		waitFor(t, 10*time.Second, "both connections re-established", func() bool { return connects.Load() >= before+2 })
	}

	kill(firstConns, 3000)
	// Consumption going on proves the consumer re-subscribed on the new connection.
	resumed := got.unique() + 500
	waitFor(t, 30*time.Second, "consumption after reconnect", func() bool { return got.unique() >= resumed })
	releaseHeld()
	if err := <-heldErr; !errors.Is(err, ErrChannelClosed) {
		t.Errorf("ack of delivery %s from the dead channel = %v, want ErrChannelClosed", d.MessageID, err)
	}
	kill(findConnections(t, topo.Name, 2, firstConns), 10_000)

	if err := <-produced; err != nil {
		t.Fatalf("producer: %v", err)
	}
	waitFor(t, 30*time.Second, fmt.Sprintf("all %d messages consumed", n), func() bool { return got.unique() == n })
	t.Logf("consumed %d unique messages; %d duplicates, %d acks refused on dead channels, %d publishes retried, %d connections made",
		got.unique(), got.duplicates(), ackErrs.Load(), retried.Load(), connects.Load())
	got.mu.Lock()
	defer got.mu.Unlock()
	if got.counts[d.MessageID] == 0 {
		t.Errorf("held message %s was never redelivered", d.MessageID)
	}
}

// TestWaitQueues publishes to each wait level and expects the message on the retry queue no
// sooner than the level's TTL, with our attempt header intact.
func TestWaitQueues(t *testing.T) {
	t.Parallel()
	amqpURL := testenv.AMQPURL(t)
	topo := newTopology(t, amqpURL, 200*time.Millisecond, 400*time.Millisecond)
	conn := startConn(t, amqpURL, ConnOptions{Name: topo.Name, Topology: &topo})
	pub := NewPublisher(conn, topo.Exchange(), PublisherOptions{})

	type arrival struct {
		at      time.Time
		attempt int
		body    string
	}
	var mu sync.Mutex
	arrived := map[string]arrival{}
	startConsumer(t, conn, topo.RetryQueue(), func(ctx context.Context, d *Delivery) error {
		mu.Lock()
		arrived[d.MessageID] = arrival{at: time.Now(), attempt: d.Attempt(), body: string(d.Body)}
		mu.Unlock()
		return nil
	}, ConsumerOptions{})

	for level, ttl := range topo.WaitDelays {
		t.Run(topo.WaitRoutingKey(level), func(t *testing.T) {
			t.Parallel()
			id := fmt.Sprintf("wait-%d", level)
			start := time.Now()
			err := pub.Publish(context.Background(), Message{
				RoutingKey: topo.WaitRoutingKey(level),
				MessageID:  id,
				Headers:    map[string]any{AttemptHeader: level + 1},
				Body:       []byte("retry me"),
			})
			if err != nil {
				t.Fatalf("Publish: %v", err)
			}
			var got arrival
			waitFor(t, 10*time.Second, id+" on the retry queue", func() bool {
				mu.Lock()
				defer mu.Unlock()
				var ok bool
				got, ok = arrived[id]
				return ok
			})
			elapsed := got.at.Sub(start)
			if elapsed < ttl {
				t.Errorf("arrived after %v, before the wait level's TTL %v", elapsed, ttl)
			}
			if diff := cmp.Diff(arrival{at: got.at, attempt: level + 1, body: "retry me"}, got, cmp.AllowUnexported(arrival{})); diff != "" {
				t.Errorf("arrival mismatch (-want +got):\n%s", diff)
			}
			t.Logf("level %v arrived after %v", ttl, elapsed)
		})
	}
}

func TestDeclare(t *testing.T) {
	t.Parallel()
	amqpURL := testenv.AMQPURL(t)
	topo := newTopology(t, amqpURL, time.Second)
	conn := startConn(t, amqpURL, ConnOptions{Name: topo.Name, Topology: &topo})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	if err := conn.Declare(ctx, topo); err != nil {
		t.Fatalf("declaring the same topology again: %v", err)
	}

	changedLimit := topo
	changedLimit.DeliveryLimit = 5
	changedDelays := topo
	changedDelays.WaitDelays = []time.Duration{2 * time.Second}
	tests := []struct {
		name      string
		topo      Topology
		wantQueue string // named in the error; "" means no error
	}{
		{"identical", topo, ""},
		{"different delivery limit", changedLimit, topo.SendQueue()},
		// A changed delay is a new queue, not a clash; the test's cleanup misses it, so delete it.
		{"different wait delays", changedDelays, ""},
	}
	t.Cleanup(func() { deleteTopology(t, amqpURL, changedDelays) })
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := conn.Declare(ctx, tt.topo)
			if tt.wantQueue == "" {
				if err != nil {
					t.Fatalf("Declare: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrTopologyMismatch) {
				t.Fatalf("Declare = %v, want ErrTopologyMismatch", err)
			}
			if !strings.Contains(err.Error(), tt.wantQueue) {
				t.Errorf("Declare error %q does not name queue %s", err, tt.wantQueue)
			}
		})
	}

	// A Conn whose topology clashes stops instead of retrying forever.
	clash := NewConn(amqpURL, testLogger(t), ConnOptions{Name: topo.Name + ".clash", Topology: &changedLimit})
	if err := clash.Run(ctx); !errors.Is(err, ErrTopologyMismatch) {
		t.Errorf("Run with a clashing topology = %v, want ErrTopologyMismatch", err)
	}
	if err := clash.Ready(ctx); !errors.Is(err, ErrStopped) || !errors.Is(err, ErrTopologyMismatch) {
		t.Errorf("Ready after Run failed = %v, want ErrStopped wrapping ErrTopologyMismatch", err)
	}
}

// TestDeadLettering checks how the consumer settles from the handler's error, and the send
// queue's dead-letter route: a rejected delivery, and one requeued past the delivery limit
// (with Requeue or with a plain error), land on the dead queue; an acked one does not.
func TestDeadLettering(t *testing.T) {
	t.Parallel()
	amqpURL := testenv.AMQPURL(t)
	topo := newTopology(t, amqpURL)
	topo.DeliveryLimit = 2
	settled := newSettlementLog(t)
	conn := startConn(t, amqpURL, ConnOptions{Name: topo.Name, Topology: &topo, Hooks: settled.hooks()})
	pub := NewPublisher(conn, topo.Exchange(), PublisherOptions{})

	startConsumer(t, conn, topo.SendQueue(), func(ctx context.Context, d *Delivery) error {
		switch {
		case strings.HasPrefix(d.MessageID, "reject"):
			return fmt.Errorf("poison: %w", Reject(errors.New("cannot decode")))
		case strings.HasPrefix(d.MessageID, "requeue"):
			return Requeue(errors.New("database down")) // a crash loop: only the delivery limit ends it
		case strings.HasPrefix(d.MessageID, "plain"):
			return errors.New("unclassified failure") // requeued like Requeue
		}
		return nil
	}, ConsumerOptions{MinRequeuePause: time.Millisecond, MaxRequeuePause: 10 * time.Millisecond,
		HoldFor: time.Nanosecond}) // every requeue through the broker, spending the limit
	dead := newSeen()
	startConsumer(t, conn, topo.DeadQueue(), ackAll(dead), ConsumerOptions{})

	ids := []string{"reject", "requeue", "plain", "ack"}
	for _, id := range ids {
		if err := pub.Publish(context.Background(), Message{RoutingKey: SendKey, MessageID: id}); err != nil {
			t.Fatalf("Publish %s: %v", id, err)
		}
	}
	waitFor(t, 10*time.Second, "all but the acked message on the dead queue", func() bool { return dead.unique() == len(ids)-1 })
	time.Sleep(100 * time.Millisecond) // let a wrongly dead-lettered ack land

	send, deadQ := topo.SendQueue()+" ", topo.DeadQueue()+" "
	want := map[string][]Settlement{
		send + "reject":   {Rejected},
		send + "requeue":  {Requeued, Requeued, Requeued},
		send + "plain":    {Requeued, Requeued, Requeued},
		send + "ack":      {Acked},
		deadQ + "reject":  {Acked},
		deadQ + "requeue": {Acked},
		deadQ + "plain":   {Acked},
	}
	if topo.DeliveryLimit+1 != len(want[send+"requeue"]) {
		t.Fatalf("want table assumes a delivery limit of 2, have %d", topo.DeliveryLimit)
	}
	if diff := cmp.Diff(want, settled.byMessage()); diff != "" {
		t.Errorf("settlements by queue and message (-want +got):\n%s", diff)
	}
}

// TestOutageLongerThanTheDeliveryLimitDeadLettersNothing has a handler fail with Requeue
// (its database down) many more times than the queue's delivery limit, then succeed: the
// consumer hands each message to the handler again in place, unacked, so the limit is never
// spent and every message is acked once, none on the dead queue.
func TestOutageLongerThanTheDeliveryLimitDeadLettersNothing(t *testing.T) {
	t.Parallel()
	const failures = 12 // six times the delivery limit
	amqpURL := testenv.AMQPURL(t)
	topo := newTopology(t, amqpURL)
	topo.DeliveryLimit = 2
	settled := newSettlementLog(t)
	conn := startConn(t, amqpURL, ConnOptions{Name: topo.Name, Topology: &topo, Hooks: settled.hooks()})
	pub := NewPublisher(conn, topo.Exchange(), PublisherOptions{})

	var mu sync.Mutex
	calls := map[string]int{}
	var redelivered []string // "id call" for every call with the flag set
	handler := func(ctx context.Context, d *Delivery) error {
		mu.Lock()
		defer mu.Unlock()
		calls[d.MessageID]++
		if d.Redelivered {
			redelivered = append(redelivered, fmt.Sprint(d.MessageID, " ", calls[d.MessageID]))
		}
		if calls[d.MessageID] <= failures {
			return Requeue(errors.New("database down"))
		}
		return nil
	}
	startConsumer(t, conn, topo.SendQueue(), handler, ConsumerOptions{MinRequeuePause: time.Millisecond,
		MaxRequeuePause: 5 * time.Millisecond})
	dead := newSeen()
	startConsumer(t, conn, topo.DeadQueue(), ackAll(dead), ConsumerOptions{})

	ids := []string{"a", "b"}
	for _, id := range ids {
		if err := pub.Publish(context.Background(), Message{RoutingKey: SendKey, MessageID: id}); err != nil {
			t.Fatalf("Publish %s: %v", id, err)
		}
	}
	waitFor(t, 10*time.Second, "both messages acked", func() bool { return len(settled.byMessage()) == len(ids) })
	time.Sleep(100 * time.Millisecond) // let a wrong dead-lettering or redelivery land

	send := topo.SendQueue() + " "
	want := map[string][]Settlement{send + "a": {Acked}, send + "b": {Acked}}
	if diff := cmp.Diff(want, settled.byMessage()); diff != "" {
		t.Errorf("settlements by queue and message (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[string]int{"a": failures, "b": failures}, settled.handledAgain()); diff != "" {
		t.Errorf("deliveries handled again (-want +got):\n%s", diff)
	}
	mu.Lock()
	defer mu.Unlock()
	if want := 2 * failures; len(redelivered) != want {
		t.Errorf("%d calls saw Redelivered (%v), want %d: every call after the first", len(redelivered), redelivered, want)
	}
	if n := dead.unique(); n != 0 {
		t.Errorf("%d messages dead-lettered, want none", n)
	}
}

// TestHeldPastHoldForGoesBackToTheQueue: a message whose handler keeps asking for a
// requeue is handled again in place until HoldFor has passed since it was received, then
// handed back to the queue (spending one redelivery of the limit), and so on until the
// delivery limit dead-letters it: holding bounds how long a delivery stays unacked without
// making a message that never succeeds live forever.
func TestHeldPastHoldForGoesBackToTheQueue(t *testing.T) {
	t.Parallel()
	amqpURL := testenv.AMQPURL(t)
	topo := newTopology(t, amqpURL)
	topo.DeliveryLimit = 2
	settled := newSettlementLog(t)
	conn := startConn(t, amqpURL, ConnOptions{Name: topo.Name, Topology: &topo, Hooks: settled.hooks()})
	pub := NewPublisher(conn, topo.Exchange(), PublisherOptions{})
	startConsumer(t, conn, topo.SendQueue(), func(ctx context.Context, d *Delivery) error {
		return Requeue(errors.New("database down for good"))
	}, ConsumerOptions{MinRequeuePause: 5 * time.Millisecond, MaxRequeuePause: 5 * time.Millisecond,
		HoldFor: 60 * time.Millisecond})
	dead := newSeen()
	startConsumer(t, conn, topo.DeadQueue(), ackAll(dead), ConsumerOptions{})

	if err := pub.Publish(context.Background(), Message{RoutingKey: SendKey, MessageID: "never"}); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	waitFor(t, 10*time.Second, "the message on the dead queue", func() bool { return dead.unique() == 1 })

	if diff := cmp.Diff([]Settlement{Requeued, Requeued, Requeued}, settled.byMessage()[topo.SendQueue()+" never"]); diff != "" {
		t.Errorf("settlements on the send queue (-want +got):\n%s", diff)
	}
	// Each of the three deliveries is held about 60 ms at 5 ms a try.
	if n := settled.handledAgain()["never"]; n < 3*5 {
		t.Errorf("handled again %d times, want several tries per delivery before each handback", n)
	}
}

func TestSettlementOf(t *testing.T) {
	t.Parallel()
	cause := errors.New("cause")
	for _, tt := range []struct {
		err  error
		want Settlement
	}{
		{nil, Acked},
		{cause, Requeued},
		{Requeue(cause), Requeued},
		{Requeue(nil), Requeued},
		{fmt.Errorf("load: %w", Requeue(cause)), Requeued},
		{Reject(cause), Rejected},
		{fmt.Errorf("decode: %w", Reject(cause)), Rejected},
	} {
		if got := SettlementOf(tt.err); got != tt.want {
			t.Errorf("SettlementOf(%v) = %s, want %s", tt.err, got, tt.want)
		}
	}
	if err := Requeue(cause); !errors.Is(err, cause) || err.Error() != "cause" {
		t.Errorf("Requeue(cause) = %q, does not wrap its cause", err)
	}
}

func TestPacerPacesConsecutiveFailures(t *testing.T) {
	t.Parallel()
	p := &pacer{min: 250 * time.Millisecond, max: 2 * time.Second}
	var got []time.Duration
	for range 6 {
		got = append(got, p.failed())
	}
	want := []time.Duration{250 * time.Millisecond, 500 * time.Millisecond, time.Second, 2 * time.Second, 2 * time.Second, 2 * time.Second}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("pauses (-want +got):\n%s", diff)
	}
	p.succeeded()
	if d := p.failed(); d != 250*time.Millisecond {
		t.Errorf("pause after a success = %s, want the first pause again", d)
	}
}

// TestConsumerShutdown cancels a consumer while a handler is busy: the handler learns that the
// consumer is stopping, finishes, and its ack still counts, and the deliveries it never
// started go back to the queue.
func TestConsumerShutdown(t *testing.T) {
	const n = 5
	t.Parallel()
	amqpURL := testenv.AMQPURL(t)
	topo := newTopology(t, amqpURL)
	ackErr := make(chan error, 2*n)
	conn := startConn(t, amqpURL, ConnOptions{Name: topo.Name, Topology: &topo, Hooks: Hooks{
		Settled: func(d *Delivery, s Settlement, err error) {
			if s != Acked {
				t.Errorf("delivery %s settled with %s, want %s", d.MessageID, s, Acked)
			}
			ackErr <- err
		},
	}})
	pub := NewPublisher(conn, topo.Exchange(), PublisherOptions{})
	if err := pub.Publish(context.Background(), messages("m", n, SendKey, nil)...); err != nil {
		t.Fatalf("Publish: %v", err)
	}

	started := make(chan string, n)
	finish := make(chan struct{})
	stopping := make(chan bool, n)
	consumer := NewConsumer(conn, topo.SendQueue(), func(ctx context.Context, d *Delivery) error {
		started <- d.MessageID
		<-finish
		select {
		case <-Stopping(ctx):
			stopping <- true
		default:
			stopping <- false
		}
		return nil
	}, ConsumerOptions{Concurrency: 1, Prefetch: n})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- consumer.Run(ctx) }()

	first := <-started
	cancel()
	select {
	case err := <-done:
		t.Fatalf("Run returned %v while a handler was still running", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(finish)
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if err := <-ackErr; err != nil {
		t.Errorf("ack during shutdown: %v", err)
	}
	if !<-stopping {
		t.Error("Stopping(ctx) was not closed for the handler running when the consumer stopped")
	}
	if len(started) != 0 {
		t.Errorf("%d more handlers started after cancel, want 0", len(started))
	}

	// Everything but the acked message is still there.
	rest := newSeen()
	startConsumer(t, conn, topo.SendQueue(), ackAll(rest), ConsumerOptions{})
	waitFor(t, 10*time.Second, "the unhandled messages redelivered", func() bool { return rest.unique() == n-1 })
	time.Sleep(100 * time.Millisecond)
	rest.mu.Lock()
	defer rest.mu.Unlock()
	if rest.counts[first] != 0 {
		t.Errorf("acked message %s was delivered again", first)
	}
	if len(rest.counts) != n-1 {
		t.Errorf("got %d messages after restart, want %d", len(rest.counts), n-1)
	}
}

// TestChannelLossEndsHandlers force-closes the connection of a consumer whose one handler
// is busy (and whose next delivery waits for it): the handler's ctx must end at once with
// cause ErrChannelClosed, so it stops sending what another consumer now gets, its answer
// settles nothing, and every message is redelivered and completes (here on a second
// connection's consumer, or on the first one's after it re-subscribed).
func TestChannelLossEndsHandlers(t *testing.T) {
	const n = 3
	t.Parallel()
	amqpURL := testenv.AMQPURL(t)
	testenv.ManagementURL(t)
	topo := newTopology(t, amqpURL)

	type settlement struct {
		id, conn string
		s        Settlement
		err      error
	}
	settled := make(chan settlement, 4*n)
	hooks := func(conn string) Hooks {
		return Hooks{Settled: func(d *Delivery, s Settlement, err error) { settled <- settlement{d.MessageID, conn, s, err} }}
	}
	connA := startConn(t, amqpURL, ConnOptions{Name: topo.Name + ".a", Topology: &topo, Hooks: hooks("a")})
	connB := startConn(t, amqpURL, ConnOptions{Name: topo.Name + ".b", Topology: &topo, Hooks: hooks("b")})
	if err := NewPublisher(connB, topo.Exchange(), PublisherOptions{}).Publish(context.Background(), messages("m", n, SendKey, nil)...); err != nil {
		t.Fatalf("Publish: %v", err)
	}

	// The first delivery's handler "sends" a step every 10ms until its ctx ends; every later
	// one (redeliveries included) is acked at once.
	type ended struct {
		id            string
		cause         error
		stepsAtEnd    int64
		stepsAfterEnd *atomic.Int64
	}
	busy := make(chan string, 1)
	endedCh := make(chan ended, 1)
	var first atomic.Bool
	completed := newSeen()
	handler := func(ctx context.Context, d *Delivery) error {
		if !first.CompareAndSwap(false, true) {
			completed.add(d.MessageID)
			return nil
		}
		busy <- d.MessageID
		var steps atomic.Int64
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for ctx.Err() == nil {
			select {
			case <-tick.C:
				steps.Add(1)
			case <-ctx.Done():
			}
		}
		endedCh <- ended{d.MessageID, context.Cause(ctx), steps.Load(), &steps}
		return Requeue(ctx.Err())
	}
	// Concurrency 1 and prefetch n: while the handler is busy the consumer holds the next
	// delivery, waiting for it, and must still notice the channel close.
	startConsumer(t, connA, topo.SendQueue(), handler, ConsumerOptions{Concurrency: 1, Prefetch: n})
	busyID := <-busy
	startConsumer(t, connB, topo.SendQueue(), handler, ConsumerOptions{Concurrency: 1})

	closeConnections(t, findConnections(t, topo.Name+".a", 1, nil))
	var e ended
	select {
	case e = <-endedCh:
	case <-time.After(30 * time.Second):
		t.Fatal("the handler's ctx did not end after its connection was closed")
	}
	if e.id != busyID {
		t.Errorf("ended handler had %s, want %s", e.id, busyID)
	}
	if !errors.Is(e.cause, ErrChannelClosed) {
		t.Errorf("context.Cause(ctx) = %v, want ErrChannelClosed", e.cause)
	}
	waitFor(t, 30*time.Second, fmt.Sprintf("all %d messages completed", n), func() bool { return completed.unique() == n })
	if got := e.stepsAfterEnd.Load(); got != e.stepsAtEnd {
		t.Errorf("%d steps after the handler's ctx ended, want 0", got-e.stepsAtEnd)
	}

	// The busy delivery's requeue went nowhere (its channel was gone); the redelivery was acked.
	var busySettled []settlement
	timeout := time.After(10 * time.Second)
	for len(busySettled) < 2 {
		select {
		case s := <-settled:
			if s.id == busyID {
				busySettled = append(busySettled, s)
			}
		case <-timeout:
			t.Fatalf("settlements of %s: %+v, want a refused requeue and an ack", busyID, busySettled)
		}
	}
	// In either order: the redelivery may be acked before the dead handler has returned.
	slices.SortFunc(busySettled, func(a, b settlement) int { return strings.Compare(string(a.s), string(b.s)) })
	if s := busySettled[0]; s.s != Acked || s.err != nil {
		t.Errorf("a settlement of %s = %s, %v; want %s, nil", busyID, s.s, s.err, Acked)
	}
	if s := busySettled[1]; s.s != Requeued || !errors.Is(s.err, ErrChannelClosed) || s.conn != "a" {
		t.Errorf("a settlement of %s = %s, %v on %s; want %s, ErrChannelClosed on a", busyID, s.s, s.err, s.conn, Requeued)
	}
}
