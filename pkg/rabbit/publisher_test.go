package rabbit

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	amqp "github.com/rabbitmq/amqp091-go"
	"golang.org/x/sync/errgroup"

	"notify/pkg/testenv"
)

func TestPublishConfirms(t *testing.T) {
	t.Parallel()
	amqpURL := testenv.AMQPURL(t)
	topo := newTopology(t, amqpURL)
	conn := startConn(t, amqpURL, ConnOptions{Name: topo.Name, Topology: &topo})
	pub := NewPublisher(conn, topo.Exchange(), PublisherOptions{Window: 256})

	got := newSeen()
	startConsumer(t, conn, topo.SendQueue(), ackAll(got), ConsumerOptions{Concurrency: 4, Prefetch: 256})

	const n, producers, batch = 10_000, 4, 500
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var g errgroup.Group
	for p := range producers {
		g.Go(func() error {
			msgs := messages(fmt.Sprintf("p%d", p), n/producers, SendKey, []byte("hello"))
			for i := 0; i < len(msgs); i += batch {
				if err := pub.Publish(ctx, msgs[i:min(i+batch, len(msgs))]...); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	waitFor(t, 30*time.Second, fmt.Sprintf("%d unique messages consumed", n), func() bool { return got.unique() == n })
	t.Logf("consumed %d unique messages, %d duplicates", got.unique(), got.duplicates())
}

func TestPublishUnroutable(t *testing.T) {
	t.Parallel()
	amqpURL := testenv.AMQPURL(t)
	topo := newTopology(t, amqpURL)
	conn := startConn(t, amqpURL, ConnOptions{Name: topo.Name, Topology: &topo})
	pub := NewPublisher(conn, topo.Exchange(), PublisherOptions{Window: 4})

	got := newSeen()
	startConsumer(t, conn, topo.SendQueue(), ackAll(got), ConsumerOptions{})

	tests := []struct {
		name       string
		keys       []string
		wantFailed []int
	}{
		{"one unroutable", []string{"nowhere"}, []int{0}},
		{"all routable", []string{SendKey, SendKey}, nil},
		// Longer than the window, so returns and acks interleave with publishing.
		{"mixed", []string{SendKey, "nowhere", SendKey, SendKey, "wait.nope", SendKey, "nowhere", SendKey, SendKey, SendKey, "nowhere"}, []int{1, 4, 6, 10}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Not parallel: the subtests share the consumer's count of routed messages.
			msgs := make([]Message, len(tt.keys))
			for i, k := range tt.keys {
				msgs[i] = Message{RoutingKey: k, MessageID: fmt.Sprintf("%s-%d", tt.name, i), Body: []byte("x")}
			}
			before := got.unique()
			err := pub.Publish(context.Background(), msgs...)

			var failed []int
			var perr *PublishError
			if errors.As(err, &perr) {
				for _, f := range perr.Failed {
					failed = append(failed, f.Index)
					if !errors.Is(f.Err, ErrUnroutable) {
						t.Errorf("message %d: err = %v, want ErrUnroutable", f.Index, f.Err)
					}
					if f.MessageID != msgs[f.Index].MessageID {
						t.Errorf("failed message %d has MessageID %q, want %q", f.Index, f.MessageID, msgs[f.Index].MessageID)
					}
				}
			} else if err != nil {
				t.Fatalf("Publish: %v, want nil or *PublishError", err)
			}
			if diff := cmp.Diff(tt.wantFailed, failed); diff != "" {
				t.Errorf("failed messages mismatch (-want +got):\n%s", diff)
			}
			if want := len(tt.wantFailed) > 0; errors.Is(err, ErrUnroutable) != want {
				t.Errorf("errors.Is(%v, ErrUnroutable) = %v, want %v", err, !want, want)
			}
			routed := len(msgs) - len(tt.wantFailed)
			waitFor(t, 10*time.Second, "routed messages consumed", func() bool { return got.unique() == before+routed })
		})
	}
}

// TestPublishUnroutableConcurrent has several goroutines share one publisher, each publishing
// batches where some messages are unroutable: each call must report exactly its own.
func TestPublishUnroutableConcurrent(t *testing.T) {
	t.Parallel()
	amqpURL := testenv.AMQPURL(t)
	topo := newTopology(t, amqpURL)
	conn := startConn(t, amqpURL, ConnOptions{Name: topo.Name, Topology: &topo})
	pub := NewPublisher(conn, topo.Exchange(), PublisherOptions{Window: 64})
	got := newSeen()
	startConsumer(t, conn, topo.SendQueue(), ackAll(got), ConsumerOptions{Concurrency: 2, Prefetch: 256})

	const producers, batches, size = 4, 5, 300
	var g errgroup.Group
	for p := range producers {
		g.Go(func() error {
			for b := range batches {
				msgs := make([]Message, size)
				var want []int
				for i := range msgs {
					key := SendKey
					if (i+p+b)%7 == 0 {
						key = fmt.Sprintf("nowhere.%d", p)
						want = append(want, i)
					}
					msgs[i] = Message{RoutingKey: key, MessageID: fmt.Sprintf("p%d-b%d-%d", p, b, i)}
				}
				err := pub.Publish(context.Background(), msgs...)
				var perr *PublishError
				if !errors.As(err, &perr) {
					return fmt.Errorf("producer %d batch %d: Publish = %v, want *PublishError", p, b, err)
				}
				var failed []int
				for _, f := range perr.Failed {
					if !errors.Is(f.Err, ErrUnroutable) {
						return fmt.Errorf("producer %d batch %d message %d: %w, want ErrUnroutable", p, b, f.Index, f.Err)
					}
					failed = append(failed, f.Index)
				}
				if diff := cmp.Diff(want, failed); diff != "" {
					return fmt.Errorf("producer %d batch %d: unroutable mismatch (-want +got):\n%s", p, b, diff)
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	routed := 0
	for p := range producers {
		for b := range batches {
			for i := range size {
				if (i+p+b)%7 != 0 {
					routed++
				}
			}
		}
	}
	waitFor(t, 20*time.Second, fmt.Sprintf("%d routed messages consumed", routed), func() bool { return got.unique() == routed })
}

// TestPublishNacked fills a queue that rejects publishes when full: the broker nacks.
func TestPublishNacked(t *testing.T) {
	t.Parallel()
	amqpURL := testenv.AMQPURL(t)
	topo := newTopology(t, amqpURL)
	queue := topo.Name + ".full"
	t.Cleanup(func() {
		conn, err := amqp.Dial(amqpURL)
		if err != nil {
			t.Errorf("cleanup: %v", err)
			return
		}
		defer conn.Close()
		ch, err := conn.Channel()
		if err != nil {
			t.Errorf("cleanup: %v", err)
			return
		}
		if _, err := ch.QueueDelete(queue, false, false, false); err != nil {
			t.Errorf("cleanup: delete %s: %v", queue, err)
		}
	})
	conn := startConn(t, amqpURL, ConnOptions{Name: topo.Name})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	raw, err := conn.connection(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ch, err := raw.Channel()
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	args := amqp.Table{"x-queue-type": "quorum", "x-max-length": int64(2), "x-overflow": "reject-publish"}
	if _, err := ch.QueueDeclare(queue, true, false, false, false, args); err != nil {
		t.Fatalf("declare %s: %v", queue, err)
	}

	// Through the default exchange, one at a time so the queue is full when the last ones
	// arrive. A quorum queue checks its limit before each enqueue, so it may take one message
	// more than x-max-length; only the first messages are certain to fit, the last to be refused.
	const n = 5
	pub := NewPublisher(conn, "", PublisherOptions{Window: 1})
	err = pub.Publish(ctx, messages("full", n, queue, []byte("x"))...)
	var perr *PublishError
	if !errors.As(err, &perr) {
		t.Fatalf("Publish = %v, want *PublishError", err)
	}
	if !errors.Is(err, ErrNacked) {
		t.Errorf("errors.Is(%v, ErrNacked) = false", err)
	}
	var failed []int
	for _, f := range perr.Failed {
		failed = append(failed, f.Index)
		if !errors.Is(f.Err, ErrNacked) {
			t.Errorf("message %d: err = %v, want ErrNacked", f.Index, f.Err)
		}
	}
	if failed[0] < 2 || failed[len(failed)-1] != n-1 {
		t.Errorf("nacked messages %v, want the last ones, not the first two", failed)
	}
}

func TestPublishRejectsInvalidMessages(t *testing.T) {
	t.Parallel()
	// Validation happens before any connection is needed: Run is never started.
	pub := NewPublisher(NewConn("amqp://unused", testLogger(t), ConnOptions{}), "x", PublisherOptions{})
	tests := []struct {
		name string
		msg  Message
	}{
		{"no message id", Message{RoutingKey: SendKey}},
		{"unsupported header", Message{RoutingKey: SendKey, MessageID: "m", Headers: map[string]any{"h": struct{}{}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if err := pub.Publish(context.Background(), tt.msg); err == nil {
				t.Error("Publish succeeded, want an error")
			}
		})
	}
}

// BenchmarkPublishConfirmed publishes 100-byte messages to a quorum queue with confirms, in
// calls of 1000, while a consumer acks them; msg/s counts messages that were both published
// (confirmed) and consumed (acked) per second. window=1 is the one-confirm-per-round-trip baseline.
func BenchmarkPublishConfirmed(b *testing.B) {
	amqpURL := testenv.AMQPURL(b)
	for _, window := range []int{256, 1} {
		b.Run(fmt.Sprintf("window=%d", window), func(b *testing.B) {
			topo := newTopology(b, amqpURL)
			// Separate connections, as in the services: TCP pushback on publishing must not slow acks.
			pubConn := startConn(b, amqpURL, ConnOptions{Name: topo.Name + ".pub", Topology: &topo})
			subConn := startConn(b, amqpURL, ConnOptions{Name: topo.Name + ".sub"})
			pub := NewPublisher(pubConn, topo.Exchange(), PublisherOptions{Window: window})
			got := newSeen()
			startConsumer(b, subConn, topo.SendQueue(), ackAll(got), ConsumerOptions{Concurrency: 2, Prefetch: 512})
			body := make([]byte, 100)
			msgs := messages(b.Name(), b.N, SendKey, body)
			ctx := context.Background()

			b.ResetTimer()
			start := time.Now()
			const batch = 1000
			for i := 0; i < len(msgs); i += batch {
				if err := pub.Publish(ctx, msgs[i:min(i+batch, len(msgs))]...); err != nil {
					b.Fatal(err)
				}
			}
			for got.unique() < b.N {
				time.Sleep(time.Millisecond)
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msg/s")
		})
	}
}
