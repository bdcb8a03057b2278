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
	amqp "github.com/rabbitmq/amqp091-go"

	"notify/pkg/testenv"
)

// ackCall is one settlement a fake Acknowledger received.
type ackCall struct {
	Op       string
	Tag      uint64
	Multiple bool
}

// recordingAcker records settlements instead of sending them.
type recordingAcker struct{ calls []ackCall }

func (r *recordingAcker) Ack(tag uint64, multiple bool) error {
	r.calls = append(r.calls, ackCall{"ack", tag, multiple})
	return nil
}

func (r *recordingAcker) Nack(tag uint64, multiple, requeue bool) error {
	r.calls = append(r.calls, ackCall{"nack", tag, multiple})
	return nil
}

func (r *recordingAcker) Reject(tag uint64, requeue bool) error {
	r.calls = append(r.calls, ackCall{"reject", tag, false})
	return nil
}

// TestSettleMixedBatch settles batches whose handlers answered a mix of acks, requeues and
// rejects on a fake channel, and checks what would reach the broker: a multiple-ack only
// over a run of consecutive acked tags with nothing unsettled below it, every other
// delivery settled alone, each as its error says.
func TestSettleMixedBatch(t *testing.T) {
	t.Parallel()
	type verdicts map[uint64]error
	requeue, reject := Requeue(errors.New("db down")), Reject(errors.New("poison"))
	for _, tc := range []struct {
		name      string
		delivered []uint64 // tags the consumer received, in order (other batches hold the rest)
		batch     []uint64 // this batch's tags
		verdicts  verdicts
		want      []ackCall
	}{{
		name:      "all acked, nothing below",
		delivered: []uint64{1, 2, 3, 4},
		batch:     []uint64{1, 2, 3, 4},
		verdicts:  verdicts{},
		want:      []ackCall{{"ack", 4, true}},
	}, {
		name:      "one delivery alone",
		delivered: []uint64{1},
		batch:     []uint64{1},
		verdicts:  verdicts{},
		want:      []ackCall{{"ack", 1, false}},
	}, {
		name:      "mixed",
		delivered: []uint64{1, 2, 3, 4, 5, 6, 7, 8},
		batch:     []uint64{1, 2, 3, 4, 5, 6, 7, 8},
		verdicts:  verdicts{4: requeue, 7: reject},
		// 1-3 are a run with nothing below; 5-6 have 4 unsettled below them (it is
		// requeued after the pause), so they are acked one by one, like 8.
		want: []ackCall{{"ack", 3, true}, {"ack", 5, false}, {"ack", 6, false}, {"ack", 8, false}, {"reject", 7, false}, {"nack", 4, false}},
	}, {
		name:      "an earlier batch still in flight",
		delivered: []uint64{1, 2, 3, 4, 5, 6},
		batch:     []uint64{4, 5, 6},
		verdicts:  verdicts{},
		want:      []ackCall{{"ack", 4, false}, {"ack", 5, false}, {"ack", 6, false}},
	}, {
		name:      "a later batch in flight does not matter",
		delivered: []uint64{1, 2, 3, 4, 5, 6},
		batch:     []uint64{1, 2, 3},
		verdicts:  verdicts{},
		want:      []ackCall{{"ack", 3, true}},
	}, {
		name:      "rejected head, acked run behind it",
		delivered: []uint64{1, 2, 3},
		batch:     []uint64{1, 2, 3},
		verdicts:  verdicts{1: reject},
		want:      []ackCall{{"ack", 2, false}, {"ack", 3, false}, {"reject", 1, false}},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rec := &recordingAcker{}
			c := &Consumer{conn: &Conn{}, log: testLogger(t), pause: pacer{min: time.Millisecond, max: time.Millisecond}}
			sub := &subscription{gen: 1, tags: newTags()}
			c.live.Store(1)
			for _, tag := range tc.delivered {
				sub.tags.delivered(tag)
			}
			batch := make([]*Delivery, len(tc.batch))
			errs := make([]error, len(tc.batch))
			for i, tag := range tc.batch {
				batch[i] = &Delivery{MessageID: fmt.Sprint(tag), raw: amqp.Delivery{Acknowledger: rec, DeliveryTag: tag}, sub: sub, live: &c.live}
				errs[i] = tc.verdicts[tag]
			}
			c.settle(context.Background(), batch, errs)
			if diff := cmp.Diff(tc.want, rec.calls); diff != "" {
				t.Errorf("settlements sent (-want +got):\n%s", diff)
			}
			var left []uint64
			for tag := range sub.tags.pending {
				left = append(left, tag)
			}
			slices.Sort(left)
			want := slices.DeleteFunc(slices.Clone(tc.delivered), func(tag uint64) bool { return slices.Contains(tc.batch, tag) })
			if diff := cmp.Diff(want, left, cmp.Comparer(func(a, b []uint64) bool { return len(a) == 0 && len(b) == 0 || slices.Equal(a, b) })); diff != "" {
				t.Errorf("tags left unsettled (-want +got):\n%s", diff)
			}
		})
	}
}

// TestSettleHoldsRequeues: within HoldFor of their receipt, deliveries to requeue are not
// nacked but returned for another try, still pending on the channel and marked
// Redelivered; one received earlier is nacked; the acks go out as ever.
func TestSettleHoldsRequeues(t *testing.T) {
	t.Parallel()
	rec := &recordingAcker{}
	c := &Consumer{conn: &Conn{}, log: testLogger(t), pause: pacer{min: time.Millisecond, max: time.Millisecond},
		opts: ConsumerOptions{HoldFor: time.Minute}}
	sub := &subscription{gen: 1, tags: newTags()}
	c.live.Store(1)
	received := map[uint64]time.Time{1: time.Now(), 2: time.Now(), 3: time.Now().Add(-time.Hour)}
	var batch []*Delivery
	for tag := uint64(1); tag <= 3; tag++ {
		sub.tags.delivered(tag)
		batch = append(batch, &Delivery{MessageID: fmt.Sprint(tag), Received: received[tag],
			raw: amqp.Delivery{Acknowledger: rec, DeliveryTag: tag}, sub: sub, live: &c.live})
	}
	again := c.settle(context.Background(), batch, []error{nil, Requeue(nil), Requeue(nil)})
	if diff := cmp.Diff([]ackCall{{"ack", 1, false}, {"nack", 3, false}}, rec.calls); diff != "" {
		t.Errorf("settlements sent (-want +got):\n%s", diff)
	}
	if len(again) != 1 || again[0] != batch[1] || !again[0].Redelivered {
		t.Fatalf("held for another try: %v, want delivery 2 marked Redelivered", again)
	}
	if _, pending := sub.tags.pending[2]; !pending || len(sub.tags.pending) != 1 {
		t.Errorf("tags pending %v, want only 2", sub.tags.pending)
	}
}

// TestSettleDeadChannel: a batch whose channel was replaced settles nothing (the broker
// redelivers it) and reports ErrChannelClosed for every delivery.
func TestSettleDeadChannel(t *testing.T) {
	t.Parallel()
	rec := &recordingAcker{}
	var got []error
	c := &Consumer{conn: &Conn{opts: ConnOptions{Hooks: Hooks{Settled: func(d *Delivery, s Settlement, err error) { got = append(got, err) }}}},
		log: testLogger(t), pause: pacer{min: time.Millisecond, max: time.Millisecond}}
	sub := &subscription{gen: 1, tags: newTags()}
	c.live.Store(2)
	var batch []*Delivery
	for tag := uint64(1); tag <= 3; tag++ {
		sub.tags.delivered(tag)
		batch = append(batch, &Delivery{raw: amqp.Delivery{Acknowledger: rec, DeliveryTag: tag}, sub: sub, live: &c.live})
	}
	c.settle(context.Background(), batch, []error{nil, Reject(nil), Requeue(nil)})
	if len(rec.calls) != 0 {
		t.Errorf("settlements sent on a dead channel: %v", rec.calls)
	}
	if len(got) != 3 {
		t.Fatalf("Settled called %d times, want 3", len(got))
	}
	for _, err := range got {
		if !errors.Is(err, ErrChannelClosed) {
			t.Errorf("settlement error %v, want ErrChannelClosed", err)
		}
	}
}

// startBatchConsumer runs a batch Consumer until the test ends.
func startBatchConsumer(t testing.TB, c *Conn, queue string, h BatchHandler, opts ConsumerOptions) {
	t.Helper()
	consumer := NewBatchConsumer(c, queue, h, opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- consumer.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Consumer.Run(%s): %v", queue, err)
		}
	})
}

// TestBatchBoundaries: while a handler is busy, a batch fills up to BatchSize and a lone
// delivery waits the linger for company; while none is, a lone delivery goes at once.
func TestBatchBoundaries(t *testing.T) {
	t.Parallel()
	amqpURL := testenv.AMQPURL(t)
	topo := newTopology(t, amqpURL)
	conn := startConn(t, amqpURL, ConnOptions{Name: topo.Name, Topology: &topo})
	pub := NewPublisher(conn, topo.Exchange(), PublisherOptions{})

	const linger = 1500 * time.Millisecond
	var mu sync.Mutex
	var sizes []int
	handledAt := map[string]time.Time{}
	got := newSeen()
	holding := make(chan struct{}) // a "hold-" delivery's handler is running
	release := make(chan struct{}) // lets it return
	startBatchConsumer(t, conn, topo.SendQueue(), func(ctx context.Context, ds []*Delivery) []error {
		mu.Lock()
		sizes = append(sizes, len(ds))
		for _, d := range ds {
			handledAt[d.MessageID] = time.Now()
		}
		mu.Unlock()
		for _, d := range ds {
			got.add(d.MessageID)
			if strings.HasPrefix(d.MessageID, "hold-") {
				holding <- struct{}{}
				<-release
			}
		}
		return make([]error, len(ds))
	}, ConsumerOptions{Concurrency: 2, BatchSize: 4, BatchLinger: linger, Prefetch: 100})
	publish := func(msgs ...Message) {
		t.Helper()
		if err := pub.Publish(context.Background(), msgs...); err != nil {
			t.Fatalf("Publish: %v", err)
		}
	}
	takeSizes := func() []int {
		mu.Lock()
		defer mu.Unlock()
		out := sizes
		sizes = nil
		return out
	}

	// Idle: a lone delivery goes at once, far before its linger.
	start := time.Now()
	publish(Message{RoutingKey: SendKey, MessageID: "idle"})
	waitFor(t, 20*time.Second, "the lone message handled", func() bool { return got.unique() == 1 })
	mu.Lock()
	if waited := handledAt["idle"].Sub(start); waited >= linger {
		t.Errorf("a lone delivery with no handler busy was handled after %v, not at once (linger %v)", waited, linger)
	}
	mu.Unlock()
	if diff := cmp.Diff([]int{1}, takeSizes()); diff != "" {
		t.Errorf("batch sizes (-want +got):\n%s", diff)
	}

	// Busy: with one handler held, a lone delivery waits for company for the linger, then
	// goes alone to the other handler.
	publish(Message{RoutingKey: SendKey, MessageID: "hold-1"})
	<-holding
	start = time.Now()
	publish(Message{RoutingKey: SendKey, MessageID: "alone"})
	waitFor(t, 20*time.Second, "the lone message handled", func() bool { return got.unique() == 3 })
	mu.Lock()
	if waited := handledAt["alone"].Sub(start); waited < linger {
		t.Errorf("a lone delivery was handled after %v while another handler was busy, before the linger %v passed", waited, linger)
	}
	mu.Unlock()
	if diff := cmp.Diff([]int{1, 1}, takeSizes()); diff != "" {
		t.Errorf("batch sizes (-want +got):\n%s", diff)
	}

	// Size: with both handlers held, 10 waiting messages are taken at most 4 at a time, and
	// the batch that fills meanwhile is full.
	publish(Message{RoutingKey: SendKey, MessageID: "hold-2"})
	<-holding
	takeSizes() // hold-2's own batch, after its linger
	publish(messages("size", 10, SendKey, nil)...)
	waitFor(t, 20*time.Second, "the 10 messages pushed to the consumer", func() bool { return readyCount(t, amqpURL, topo.SendQueue()) == 0 })
	// The batch filling meanwhile lingers (a handler is busy), so it goes once full: 4.
	release <- struct{}{} // hold-1
	release <- struct{}{} // hold-2
	waitFor(t, 20*time.Second, "every message handled", func() bool { return got.unique() == 14 })
	sz := takeSizes()
	total := 0
	for _, n := range sz {
		total += n
		if n > 4 {
			t.Errorf("a batch of %d, over BatchSize 4: %v", n, sz)
		}
	}
	if total != 10 || len(sz) == 0 || sz[0] != 4 {
		t.Errorf("batch sizes %v: want the 10 deliveries, the first batch full", sz)
	}
	if got.duplicates() != 0 {
		t.Errorf("%d duplicate deliveries", got.duplicates())
	}
}

// readyCount is how many messages of queue wait in the broker, not yet sent to a consumer.
func readyCount(t testing.TB, amqpURL, queue string) int {
	t.Helper()
	conn, err := amqp.Dial(amqpURL)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatalf("channel: %v", err)
	}
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	if err != nil {
		t.Fatalf("inspect %s: %v", queue, err)
	}
	return q.Messages
}

// TestBatchMixedSettlements runs batches on a real broker whose handler acks, requeues and
// rejects deliveries of the same batch: each is settled as its own error says (acked once,
// requeued and delivered again, rejected to the dead queue), whatever its neighbours got.
func TestBatchMixedSettlements(t *testing.T) {
	t.Parallel()
	amqpURL := testenv.AMQPURL(t)
	topo := newTopology(t, amqpURL)
	settled := newSettlementLog(t)
	conn := startConn(t, amqpURL, ConnOptions{Name: topo.Name, Topology: &topo, Hooks: settled.hooks()})
	pub := NewPublisher(conn, topo.Exchange(), PublisherOptions{})

	var msgs []Message
	for i := range 8 {
		for _, kind := range []string{"ack", "requeue", "reject"} {
			msgs = append(msgs, Message{RoutingKey: SendKey, MessageID: fmt.Sprintf("%s-%d", kind, i)})
		}
	}
	if err := pub.Publish(context.Background(), msgs...); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	var batches atomic.Int32
	var mixed atomic.Bool
	startBatchConsumer(t, conn, topo.SendQueue(), func(ctx context.Context, ds []*Delivery) []error {
		batches.Add(1)
		errs := make([]error, len(ds))
		kinds := map[string]bool{}
		for i, d := range ds {
			switch kind, _, _ := strings.Cut(d.MessageID, "-"); {
			case kind == "requeue" && !d.Redelivered:
				errs[i] = Requeue(errors.New("database down"))
			case kind == "reject":
				errs[i] = fmt.Errorf("decode: %w", Reject(errors.New("poison")))
			}
			kinds[fmt.Sprint(SettlementOf(errs[i]))] = true
		}
		if len(kinds) == 3 {
			mixed.Store(true)
		}
		return errs
	}, ConsumerOptions{Concurrency: 2, BatchSize: 8, BatchLinger: 50 * time.Millisecond, MinRequeuePause: time.Millisecond,
		HoldFor: time.Nanosecond}) // requeued through the broker, not handled again in place
	dead := newSeen()
	startConsumer(t, conn, topo.DeadQueue(), ackAll(dead), ConsumerOptions{})

	waitFor(t, 20*time.Second, "every message settled", func() bool {
		return len(settled.byMessage()) == len(msgs)+8 // the rejected ones also on the dead queue
	})
	time.Sleep(200 * time.Millisecond) // let a wrong redelivery arrive
	if !mixed.Load() {
		t.Fatal("no batch held acks, requeues and rejects together; the test proves nothing")
	}
	want := map[string][]Settlement{}
	for i := range 8 {
		want[fmt.Sprintf("%s ack-%d", topo.SendQueue(), i)] = []Settlement{Acked}
		want[fmt.Sprintf("%s requeue-%d", topo.SendQueue(), i)] = []Settlement{Requeued, Acked}
		want[fmt.Sprintf("%s reject-%d", topo.SendQueue(), i)] = []Settlement{Rejected}
		want[fmt.Sprintf("%s reject-%d", topo.DeadQueue(), i)] = []Settlement{Acked}
	}
	if diff := cmp.Diff(want, settled.byMessage()); diff != "" {
		t.Errorf("settlements by queue and message (-want +got):\n%s", diff)
	}
	t.Logf("%d batches", batches.Load())
}

// TestBatchShutdownLosesNothing stops a batch consumer while a batch is in its handler and
// more deliveries wait in the consumer: the batch in flight is settled as its handler says
// (its acks count, its requeues go back), and everything not acked is delivered again to
// the next consumer.
func TestBatchShutdownLosesNothing(t *testing.T) {
	const n = 40
	t.Parallel()
	amqpURL := testenv.AMQPURL(t)
	topo := newTopology(t, amqpURL)
	conn := startConn(t, amqpURL, ConnOptions{Name: topo.Name, Topology: &topo})
	pub := NewPublisher(conn, topo.Exchange(), PublisherOptions{})
	if err := pub.Publish(context.Background(), messages("m", n, SendKey, nil)...); err != nil {
		t.Fatalf("Publish: %v", err)
	}

	acked := newSeen()
	started := make(chan []string, n)
	consumer := NewBatchConsumer(conn, topo.SendQueue(), func(ctx context.Context, ds []*Delivery) []error {
		ids := make([]string, len(ds))
		for i, d := range ds {
			ids[i] = d.MessageID
		}
		started <- ids
		<-Stopping(ctx)
		// Half of the batch done, the rest handed back, as a stopping sender does.
		errs := make([]error, len(ds))
		for i, d := range ds {
			if i%2 == 0 {
				acked.add(d.MessageID)
			} else {
				errs[i] = Requeue(errors.New("stopping"))
			}
		}
		return errs
	}, ConsumerOptions{Concurrency: 1, BatchSize: 8, BatchLinger: 20 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- consumer.Run(ctx) }()
	first := <-started
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if len(first) < 1 || len(first) > 8 { // at once, with what had arrived (no handler was busy)
		t.Errorf("first batch had %d deliveries, want 1 to 8", len(first))
	}
	if len(started) != 0 {
		t.Errorf("%d more batches started after cancel, want 0", len(started))
	}
	firstAcked := acked.unique()

	rest := newSeen()
	startBatchConsumer(t, conn, topo.SendQueue(), func(ctx context.Context, ds []*Delivery) []error {
		for _, d := range ds {
			rest.add(d.MessageID)
		}
		return make([]error, len(ds))
	}, ConsumerOptions{})
	waitFor(t, 20*time.Second, "the rest redelivered", func() bool { return rest.unique() == n-firstAcked })
	time.Sleep(200 * time.Millisecond)
	rest.mu.Lock()
	defer rest.mu.Unlock()
	acked.mu.Lock()
	defer acked.mu.Unlock()
	for id := range acked.counts {
		if rest.counts[id] != 0 {
			t.Errorf("acked message %s was delivered again", id)
		}
	}
	if len(rest.counts)+len(acked.counts) != n {
		t.Errorf("%d acked before the stop + %d after = %d, want %d", len(acked.counts), len(rest.counts), len(rest.counts)+len(acked.counts), n)
	}
}
