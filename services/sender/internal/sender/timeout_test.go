package sender

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"notify/pkg/delivery"
	"notify/pkg/fcm"
	"notify/pkg/rabbit"
)

// pacedFCM delivers every token after a pause per multicast; with hang set, it answers only
// when ctx ends, every token failed as the SDK reports a cut call.
type pacedFCM struct {
	pause time.Duration
	hang  bool

	mu    sync.Mutex
	calls int
}

func (f *pacedFCM) SendMulticast(ctx context.Context, _ fcm.Message, tokens []string) ([]fcm.Result, error) {
	f.mu.Lock()
	f.calls++
	f.mu.Unlock()
	out := make([]fcm.Result, len(tokens))
	if f.hang {
		<-ctx.Done()
		err := &fcm.SendError{Code: "TIMEOUT", Kind: fcm.ErrTransient, Err: ctx.Err()}
		for i, t := range tokens {
			out[i] = fcm.Result{Token: t, Err: err}
		}
		return out, err
	}
	time.Sleep(f.pause)
	for i, t := range tokens {
		out[i] = fcm.Result{Token: t, MessageID: "m"}
	}
	return out, nil
}

func (f *pacedFCM) multicasts() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

// timeoutHandler is e's database with f as FCM and a step deadline of timeout.
func timeoutHandler(e *batchEnv, f delivery.Pusher, timeout time.Duration) *Handler {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	store := delivery.NewStore(e.pool)
	d := delivery.NewDeliverer(store, f, e.pub, rabbit.NewTopology("test", []time.Duration{time.Second}), log,
		prometheus.NewRegistry(), delivery.Options{MaxAttempts: 3, MaxConcurrentSends: 4})
	return NewHandler(store, d, log, prometheus.NewRegistry(), 1).WithTaskTimeout(timeout)
}

// TestTaskTimeoutHandsBackAHungStep: while the notifications table is locked (a database
// that hangs), a send task does not hold its delivery for ever: SEND_TASK_TIMEOUT hands it
// back to the queue, saying so, with nothing sent; once the database answers it is sent.
func TestTaskTimeoutHandsBackAHungStep(t *testing.T) {
	t.Parallel()
	e := newBatchEnv(t)
	id := e.notification(t, "ana", 3, time.Hour)
	f := &pacedFCM{}
	h := timeoutHandler(e, f, 2*time.Second)

	ctx := context.Background()
	tx, err := e.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // committed or rolled back below
	if _, err := tx.Exec(ctx, "LOCK TABLE notifications IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- h.Handle(ctx, sendTask(t, id)) }()
	select {
	case err = <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("the send task is still held 60s after its 2s SEND_TASK_TIMEOUT")
	}
	if rabbit.SettlementOf(err) != rabbit.Requeued || !errors.Is(err, delivery.ErrStepTimeout) || !strings.Contains(err.Error(), "SEND_TASK_TIMEOUT 2s passed") {
		t.Errorf("Handle while the database hangs = %v, want a requeue explained by SEND_TASK_TIMEOUT", err)
	}
	if n := f.multicasts(); n != 0 {
		t.Errorf("%d multicasts while the notification could not be read, want 0", n)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}

	if err := h.Handle(ctx, sendTask(t, id)); err != nil {
		t.Fatalf("Handle once the database answers: %v", err)
	}
	if st, delivered := e.status(t, id); st != "delivered" || delivered != 3 {
		t.Errorf("notification %s with %d delivered, want delivered with 3", st, delivered)
	}
}

// TestTaskTimeoutCutsAHungMulticast: a multicast that never answers is cut at
// SEND_TASK_TIMEOUT; its tokens are handed to the retry queue and recorded retrying, and the
// task is done with (acked): nothing lost, nothing held.
func TestTaskTimeoutCutsAHungMulticast(t *testing.T) {
	t.Parallel()
	e := newBatchEnv(t)
	id := e.notification(t, "bo", 4, time.Hour)
	h := timeoutHandler(e, &pacedFCM{hang: true}, 2*time.Second)

	done := make(chan error, 1)
	go func() { done <- h.Handle(context.Background(), sendTask(t, id)) }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Handle with a hung multicast = %v, want nil (the tokens went to the retry queue)", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the send task is still held 60s after its 2s SEND_TASK_TIMEOUT")
	}
	var status string
	var retrying int
	if err := e.pool.QueryRow(context.Background(), "SELECT status, retrying FROM notifications WHERE id = $1", id).Scan(&status, &retrying); err != nil {
		t.Fatal(err)
	}
	if status != "retrying" || retrying != 4 {
		t.Errorf("notification %s with %d retrying, want retrying with 4", status, retrying)
	}
	e.pub.mu.Lock()
	defer e.pub.mu.Unlock()
	if len(e.pub.msgs) != 1 || !strings.HasPrefix(e.pub.msgs[0].RoutingKey, "wait.") {
		t.Errorf("handed off %d messages, want one retry task to a wait queue", len(e.pub.msgs))
	}
}

// TestTaskTimeoutIsPerChunk: the deadline bounds each chunk of a broadcast, not the
// broadcast: 8 chunks that each take a quarter of SEND_TASK_TIMEOUT to send, one at a time,
// take twice the deadline in all and end delivered, the task acked.
func TestTaskTimeoutIsPerChunk(t *testing.T) {
	t.Parallel()
	e := newBatchEnv(t)
	const devices = 8 * fcm.MaxMulticast
	id := e.notification(t, "crowd", devices, time.Hour)
	const timeout = 4 * time.Second
	f := &pacedFCM{pause: timeout / 4}
	h := timeoutHandler(e, f, timeout)

	start := time.Now()
	if err := h.Handle(context.Background(), sendTask(t, id)); err != nil {
		t.Fatalf("Handle: %v", err)
	}
	if took := time.Since(start); took < 2*timeout {
		t.Fatalf("the broadcast took %s, less than twice SEND_TASK_TIMEOUT %s: it proves nothing", took, timeout)
	}
	if st, delivered := e.status(t, id); st != "delivered" || delivered != devices {
		t.Errorf("notification %s with %d delivered, want delivered with %d", st, delivered, devices)
	}
	if n := f.multicasts(); n != 8 {
		t.Errorf("%d multicasts, want 8", n)
	}
}
