package sender

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"notify/pkg/delivery"
	"notify/pkg/fcm"
	"notify/pkg/rabbit"
	"notify/pkg/rabbit/rabbittest"
	"notify/pkg/testenv"
)

// cutFCM delivers every token; its second multicast is the one in flight when the
// connection dies: it waits for its ctx to end (as the SDK's requests are cut) and then
// reports its tokens delivered (they had gone out). It counts multicasts begun with an
// ended ctx.
type cutFCM struct {
	inFlight chan struct{}

	mu        sync.Mutex
	calls     int
	afterEnd  int
	sentCount map[string]int
}

func (f *cutFCM) SendMulticast(ctx context.Context, _ fcm.Message, tokens []string) ([]fcm.Result, error) {
	f.mu.Lock()
	f.calls++
	call := f.calls
	if ctx.Err() != nil {
		f.afterEnd++
	}
	for _, t := range tokens {
		f.sentCount[t]++
	}
	f.mu.Unlock()
	if call == 2 {
		close(f.inFlight)
		<-ctx.Done()
	}
	out := make([]fcm.Result, len(tokens))
	for i, t := range tokens {
		out[i] = fcm.Result{Token: t, MessageID: "m"}
	}
	return out, nil
}

// TestChannelLossStopsBroadcast: the broker connection of a sender dies while the second
// chunk of a 2,500-token broadcast is in flight. The handler's ctx ends, so no further
// chunk is sent; the chunk in flight is still recorded; the task, redelivered to a second
// sender, sends only the rest: every token exactly once, the notification delivered.
func TestChannelLossStopsBroadcast(t *testing.T) {
	t.Parallel()
	const devices = 2500
	e := newBatchEnv(t)
	amqpURL := testenv.AMQPURL(t)
	testenv.ManagementURL(t)
	topo := rabbittest.Topology(t, amqpURL, "sender", rabbit.NewTopology("", []time.Duration{time.Second}))

	f := &cutFCM{inFlight: make(chan struct{}), sentCount: map[string]int{}}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	store := delivery.NewStore(e.pool)
	d := delivery.NewDeliverer(store, f, e.pub, topo, log, prometheus.NewRegistry(), delivery.Options{MaxAttempts: 3, MaxConcurrentSends: 4})
	h := NewHandler(store, d, log, prometheus.NewRegistry(), 1) // one chunk in flight at a time

	// The first sender's settlement of the task shows when its handler has returned.
	firstDone := make(chan error, 1)
	connA := rabbittest.StartConn(t, amqpURL, rabbit.ConnOptions{Name: topo.Name + ".a", Topology: &topo, Hooks: rabbit.Hooks{
		Settled: func(_ *rabbit.Delivery, _ rabbit.Settlement, err error) {
			select {
			case firstDone <- err:
			default:
			}
		},
	}})
	connB := rabbittest.StartConn(t, amqpURL, rabbit.ConnOptions{Name: topo.Name + ".b", Topology: &topo})
	brokerA := rabbittest.BrokerName(t, topo.Name+".a")

	id := e.notification(t, "crowd", devices, time.Hour)
	task := sendTask(t, id)
	if err := rabbit.NewPublisher(connB, topo.Exchange(), rabbit.PublisherOptions{}).Publish(context.Background(),
		rabbit.Message{RoutingKey: rabbit.SendKey, MessageID: task.MessageID, Type: task.Type, Body: task.Body}); err != nil {
		t.Fatal(err)
	}
	// A redelivery waits for the first handler to have returned, so that what it recorded
	// decides what is left (in production the two race: the chunk in flight may go twice).
	firstDoneSeen := make(chan struct{})
	closeSeen := sync.OnceFunc(func() { close(firstDoneSeen) })
	t.Cleanup(closeSeen)
	var redelivered atomic.Bool
	handle := func(ctx context.Context, ds []*rabbit.Delivery) []error {
		if ds[0].Redelivered {
			select {
			case <-firstDoneSeen:
			case <-ctx.Done():
				return []error{rabbit.Requeue(ctx.Err())}
			}
			redelivered.Store(true)
		}
		return h.HandleBatch(ctx, ds)
	}
	opts := rabbit.ConsumerOptions{Concurrency: 1, BatchSize: 1}
	startBatchConsumer(t, connA, topo.SendQueue(), handle, opts)

	select {
	case <-f.inFlight:
	case <-time.After(60 * time.Second):
		t.Fatal("the second chunk was never sent")
	}
	startBatchConsumer(t, connB, topo.SendQueue(), handle, opts)
	rabbittest.CloseConnection(t, brokerA)
	select {
	case err := <-firstDone:
		if !errors.Is(err, rabbit.ErrChannelClosed) {
			t.Errorf("first sender's settlement: %v, want ErrChannelClosed", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the first sender's handler did not return after its connection died")
	}
	f.mu.Lock()
	callsAtLoss := f.calls
	f.mu.Unlock()
	closeSeen()

	waitUntil(t, 60*time.Second, "the broadcast delivered", func() bool {
		st, n := e.status(t, id)
		return st == "delivered" && n == devices
	})
	if !redelivered.Load() {
		t.Error("the broadcast was completed without the task being redelivered")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if callsAtLoss != 2 {
		t.Errorf("%d multicasts by the first sender, want 2 (none after its connection died)", callsAtLoss)
	}
	if f.afterEnd != 0 {
		t.Errorf("%d multicasts begun with an ended ctx, want 0", f.afterEnd)
	}
	if len(f.sentCount) != devices {
		t.Errorf("%d distinct tokens sent, want %d", len(f.sentCount), devices)
	}
	for tok, c := range f.sentCount {
		if c != 1 {
			t.Errorf("token %s sent %d times, want once (the chunk in flight was recorded)", tok, c)
			break
		}
	}
}

// startBatchConsumer runs a batch consumer until the test ends.
func startBatchConsumer(t *testing.T, conn *rabbit.Conn, queue string, h rabbit.BatchHandler, opts rabbit.ConsumerOptions) {
	t.Helper()
	c := rabbit.NewBatchConsumer(conn, queue, h, opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("consumer: %v", err)
		}
	})
}

// waitUntil polls cond until it holds or timeout passes.
func waitUntil(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
