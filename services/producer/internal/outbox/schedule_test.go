package outbox

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"notify/pkg/pgtest"
	"notify/pkg/rabbit"
	"notify/pkg/schema"
)

// recorder records what it is asked to publish.
type recorder struct {
	mu   sync.Mutex
	sent []rabbit.Message
	// seen, when set, is called with each message before it is recorded.
	seen func(rabbit.Message)
}

func (p *recorder) Publish(_ context.Context, msgs ...rabbit.Message) error {
	if p.seen != nil {
		for _, m := range msgs {
			p.seen(m)
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.sent = append(p.sent, msgs...)
	return nil
}

// messages returns the tasks published (status events left out).
func (p *recorder) messages() []rabbit.Message {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []rabbit.Message
	for _, m := range p.sent {
		if m.Type != schema.StatusEventType {
			out = append(out, m)
		}
	}
	return out
}

// events returns the routing keys of the status events published.
func (p *recorder) events() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for _, m := range p.sent {
		if m.Type == schema.StatusEventType {
			out = append(out, m.RoutingKey)
		}
	}
	return out
}

// TestScheduledRowIsRelayedOnceWhenDue: two relays that poll only hourly and are never
// woken leave a scheduled row alone until its due time, then one of them (its timer)
// moves its notification from scheduled to pending, and only then is the send task
// published, exactly once: a sender that got it earlier could record the outcome over a
// notification still scheduled, and its pending event would never be written. A row for
// now is relayed at once beside it.
func TestScheduledRowIsRelayedOnceWhenDue(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	id := uuid.New()
	due := time.Now().Add(2 * time.Second)
	if _, err := db.Pool.Exec(ctx, `INSERT INTO notifications (id, caller, type, request, expires_at, status, send_at)
		VALUES ($1, 'c', 't', '{}', now() + interval '1 hour', $2, $3)`, id, schema.StatusScheduled, due); err != nil {
		t.Fatal(err)
	}
	task, err := SendTask(id, CausePublish, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Pool.Exec(ctx, `INSERT INTO outbox (notification_id, routing_key, message_type, body, due_at)
		VALUES ($1, $2, $3, $4, $5)`, id, task.RoutingKey, task.MessageType, task.Body, due); err != nil {
		t.Fatal(err)
	}
	insertRows(t, db, 1) // a row for now

	var statusAtPublish []string // the notification's committed status when its task went out
	pub := &recorder{seen: func(m rabbit.Message) {
		if string(m.Body) != string(task.Body) {
			return
		}
		var st string
		if err := db.Pool.QueryRow(ctx, "SELECT status FROM notifications WHERE id = $1", id).Scan(&st); err != nil {
			st = err.Error()
		}
		statusAtPublish = append(statusAtPublish, st)
	}}
	runCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for range 2 {
		r := NewRelay(db.Pool, pub, discard, prometheus.NewRegistry(), Options{PollInterval: time.Hour})
		wg.Go(func() { _ = r.Run(runCtx) })
	}
	defer func() { stop(); wg.Wait() }()

	status := func() string {
		var st string
		if err := db.Pool.QueryRow(ctx, "SELECT status FROM notifications WHERE id = $1", id).Scan(&st); err != nil {
			t.Fatal(err)
		}
		return st
	}
	deadline := time.Now().Add(time.Minute)
	for len(pub.messages()) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("after a minute %d messages were published, want 2", len(pub.messages()))
		}
		if len(pub.messages()) == 1 && time.Now().Before(due) && status() != schema.StatusScheduled {
			t.Errorf("status %q before the due time, want scheduled", status())
		}
		time.Sleep(20 * time.Millisecond)
	}
	msgs := pub.messages()
	if msgs[0].RoutingKey != "send" || string(msgs[0].Body) != "task 1" {
		t.Errorf("first message = %+v, want the row for now", msgs[0])
	}
	if got := time.Now(); got.Before(due) {
		t.Errorf("scheduled row published at %v, before its due time %v", got, due)
	}
	if msgs[1].MessageID == msgs[0].MessageID || string(msgs[1].Body) != string(task.Body) {
		t.Errorf("second message = %+v, want the scheduled send task", msgs[1])
	}
	// Exactly once: give the other relay's timer a chance to have fired too.
	time.Sleep(500 * time.Millisecond)
	if n := len(pub.messages()); n != 2 {
		t.Errorf("%d messages published, want 2 (the scheduled one once)", n)
	}
	pub.mu.Lock()
	if len(statusAtPublish) != 1 || statusAtPublish[0] != schema.StatusPending {
		t.Errorf("notification's status when its send task was published: %v, want pending (committed first)", statusAtPublish)
	}
	pub.mu.Unlock()
	// The move to pending is announced once (the relays publish the event it wrote).
	for len(pub.events()) == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if got := pub.events(); len(got) != 1 || got[0] != "pending.t" {
		t.Errorf("status events %v, want one pending.t", got)
	}
}
