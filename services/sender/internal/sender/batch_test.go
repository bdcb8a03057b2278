package sender

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"notify/pkg/deadletter"
	"notify/pkg/delivery"
	"notify/pkg/pgtest"
	"notify/pkg/rabbit"
	"notify/pkg/rabbit/rabbittest"
	"notify/pkg/testenv"
	busv1 "notify/proto/gen/notify/bus/v1"
)

// recordingPublisher records what would go to the broker and confirms it.
type recordingPublisher struct {
	mu   sync.Mutex
	msgs []rabbit.Message
}

func (p *recordingPublisher) Publish(_ context.Context, msgs ...rabbit.Message) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.msgs = append(p.msgs, msgs...)
	return nil
}

func (p *recordingPublisher) deadReasons() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for _, m := range p.msgs {
		if r, ok := m.Headers[deadletter.ReasonHeader].(string); ok {
			out = append(out, r)
		}
	}
	slices.Sort(out)
	return out
}

// batchEnv is a sender handler on a fresh database with a fake FCM.
type batchEnv struct {
	pool *pgxpool.Pool
	fcm  *fakeFCM
	pub  *recordingPublisher
	h    *Handler
}

func newBatchEnv(t *testing.T) *batchEnv {
	t.Helper()
	db := pgtest.New(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	e := &batchEnv{pool: db.Pool, fcm: &fakeFCM{tokens: map[string]int{}}, pub: &recordingPublisher{}}
	store := delivery.NewStore(db.Pool)
	d := delivery.NewDeliverer(store, e.fcm, e.pub, rabbit.NewTopology("test", []time.Duration{time.Second}), log,
		prometheus.NewRegistry(), delivery.Options{MaxAttempts: 3, MaxConcurrentSends: 4})
	e.h = NewHandler(store, d, log, prometheus.NewRegistry(), 3)
	return e
}

// notification stores a notification for user with devices devices (tokens user-tok-1…),
// expiring after ttl, and returns its id.
func (e *batchEnv) notification(t *testing.T, user string, devices int, ttl time.Duration) string {
	t.Helper()
	ctx := context.Background()
	if _, err := e.pool.Exec(ctx, `INSERT INTO devices (device_id, user_id, token, platform)
		SELECT $1 || '-' || i, $1, $1 || '-tok-' || i, 'android' FROM generate_series(1, $2) i`, user, devices); err != nil {
		t.Fatal(err)
	}
	id := uuid.New()
	if _, err := e.pool.Exec(ctx, `INSERT INTO notifications (id, caller, type, request, expires_at)
		VALUES ($1, 'test', 't', $2, now() + $3::interval)`,
		id, fmt.Sprintf(`{"type":"t","recipients":{"userIds":{"userIds":[%q]}},"content":{"title":"hi"}}`, user), ttl.String()); err != nil {
		t.Fatal(err)
	}
	return id.String()
}

func (e *batchEnv) status(t *testing.T, id string) (string, int) {
	t.Helper()
	var status string
	var delivered int
	if err := e.pool.QueryRow(context.Background(), "SELECT status, delivered FROM notifications WHERE id = $1", id).Scan(&status, &delivered); err != nil {
		t.Fatal(err)
	}
	return status, delivered
}

func sendTask(t *testing.T, id string) *rabbit.Delivery {
	t.Helper()
	body, err := proto.Marshal(&busv1.SendTask{NotificationId: id, Cause: "publish"})
	if err != nil {
		t.Fatal(err)
	}
	return &rabbit.Delivery{MessageID: "task-" + id, Type: "notify.bus.v1.SendTask", Body: body}
}

func settlements(errs []error) []rabbit.Settlement {
	out := make([]rabbit.Settlement, len(errs))
	for i, err := range errs {
		out[i] = rabbit.SettlementOf(err)
	}
	return out
}

// TestBatchOneStoreFails: in a batch of small notifications, the database refuses the
// outcomes of one. The others are sent, recorded delivered and acked; that one alone is
// requeued with nothing of it recorded, and is delivered when it comes back.
func TestBatchOneStoreFails(t *testing.T) {
	t.Parallel()
	e := newBatchEnv(t)
	ctx := context.Background()
	var ids []string
	for i := range 5 {
		ids = append(ids, e.notification(t, fmt.Sprintf("user%d", i), 2, time.Hour))
	}
	refuseOutcomes(t, e, "user2-%") // any outcome of user2's tokens
	ds := make([]*rabbit.Delivery, len(ids))
	for i, id := range ids {
		ds[i] = sendTask(t, id)
	}
	errs := e.h.HandleBatch(ctx, ds)
	want := []rabbit.Settlement{rabbit.Acked, rabbit.Acked, rabbit.Requeued, rabbit.Acked, rabbit.Acked}
	if diff := cmp.Diff(want, settlements(errs)); diff != "" {
		t.Errorf("settlements (-want +got):\n%s\nerrors: %v", diff, errs)
	}
	for i, id := range ids {
		status, delivered := e.status(t, id)
		wantStatus, wantDelivered := "delivered", 2
		if i == 2 {
			wantStatus, wantDelivered = "pending", 0
		}
		if status != wantStatus || delivered != wantDelivered {
			t.Errorf("notification %d: status %s with %d delivered, want %s with %d", i, status, delivered, wantStatus, wantDelivered)
		}
	}
	var rows int
	if err := e.pool.QueryRow(ctx, "SELECT count(*) FROM deliveries WHERE notification_id = $1", ids[2]).Scan(&rows); err != nil || rows != 0 {
		t.Errorf("%d deliveries recorded for the refused notification (%v), want 0", rows, err)
	}

	// The requeued task comes back once the database takes it; nothing else is sent again.
	if _, err := e.pool.Exec(ctx, "DROP TRIGGER refuse_poison ON deliveries"); err != nil {
		t.Fatal(err)
	}
	if errs := e.h.HandleBatch(ctx, []*rabbit.Delivery{ds[2], ds[0]}); errs[0] != nil || errs[1] != nil {
		t.Fatalf("redelivered tasks: %v", errs)
	}
	if status, delivered := e.status(t, ids[2]); status != "delivered" || delivered != 2 {
		t.Errorf("refused notification after its redelivery: %s with %d delivered, want delivered with 2", status, delivered)
	}
	for tok, n := range e.fcm.tokens {
		if want := map[bool]int{true: 2, false: 1}[tok[:5] == "user2"]; n != want {
			t.Errorf("token %s sent %d times, want %d", tok, n, want)
		}
	}
}

// TestBatchMixed: one batch holding every kind of task. Each is settled on its own: small
// notifications sent together (one multicast each), a large audience through the paged
// path, an unknown id and an undecodable body dead-lettered, a final notification and a
// second task for a notification of the same batch acked as duplicates, an expired one
// marked expired without a send.
func TestBatchMixed(t *testing.T) {
	t.Parallel()
	e := newBatchEnv(t)
	ctx := context.Background()
	small1 := e.notification(t, "small1", 1, time.Hour)
	small2 := e.notification(t, "small2", 3, time.Hour)
	large := e.notification(t, "large", 1201, time.Hour)
	final := e.notification(t, "final", 1, time.Hour)
	if _, err := e.pool.Exec(ctx, "UPDATE notifications SET status = 'delivered' WHERE id = $1", final); err != nil {
		t.Fatal(err)
	}
	expired := e.notification(t, "expired", 1, -time.Minute)
	empty := e.notification(t, "nobody", 0, time.Hour)

	ds := []*rabbit.Delivery{
		sendTask(t, small1),
		sendTask(t, large),
		sendTask(t, uuid.NewString()),
		{MessageID: "garbage", Body: []byte("\xff\xff not a task")},
		sendTask(t, final),
		sendTask(t, small2),
		sendTask(t, expired),
		sendTask(t, small1),
		sendTask(t, empty),
	}
	errs := e.h.HandleBatch(ctx, ds)
	for i, err := range errs {
		if err != nil {
			t.Errorf("task %d (%s): %v, want it acked", i, ds[i].MessageID, err)
		}
	}
	if diff := cmp.Diff([]string{deadletter.ReasonUndecodable, deadletter.ReasonUnknownNotification}, e.pub.deadReasons()); diff != "" {
		t.Errorf("dead letters (-want +got):\n%s", diff)
	}
	slices.Sort(e.fcm.sizes)
	if diff := cmp.Diff([]int{1, 3, 201, 500, 500}, e.fcm.sizes); diff != "" {
		t.Errorf("multicast sizes (-want +got):\n%s", diff)
	}
	for _, tc := range []struct {
		id, status string
		delivered  int
	}{
		{small1, "delivered", 1}, {small2, "delivered", 3}, {large, "delivered", 1201},
		{final, "delivered", 0}, {expired, "expired", 0}, {empty, "delivered", 0},
	} {
		if status, delivered := e.status(t, tc.id); status != tc.status || delivered != tc.delivered {
			t.Errorf("notification %s: %s with %d delivered, want %s with %d", tc.id, status, delivered, tc.status, tc.delivered)
		}
	}
}

// TestBatchConsumerStopMidBatchLosesNothing runs the sender's batch consumer on a real
// broker and stops it while batches are in flight, then lets a second one finish the queue:
// every notification ends delivered with every token recorded, none lost.
func TestBatchConsumerStopMidBatchLosesNothing(t *testing.T) {
	t.Parallel()
	const n = 300
	e := newBatchEnv(t)
	ctx := context.Background()
	amqpURL := testenv.AMQPURL(t)
	topo := rabbittest.Topology(t, amqpURL, "sender", rabbit.NewTopology("", []time.Duration{time.Second}))
	conn := rabbittest.StartConn(t, amqpURL, rabbit.ConnOptions{Name: topo.Name, Topology: &topo})

	ids := make([]string, n)
	msgs := make([]rabbit.Message, n)
	for i := range ids {
		ids[i] = e.notification(t, fmt.Sprintf("u%d", i), 1+i%3, time.Hour)
		d := sendTask(t, ids[i])
		msgs[i] = rabbit.Message{RoutingKey: rabbit.SendKey, MessageID: d.MessageID, Type: d.Type, Body: d.Body}
	}
	pub := rabbit.NewPublisher(conn, topo.Exchange(), rabbit.PublisherOptions{})
	if err := pub.Publish(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	opts := rabbit.ConsumerOptions{Concurrency: 2, BatchSize: 16, BatchLinger: 5 * time.Millisecond, MinRequeuePause: time.Millisecond}
	delivered := func() int {
		var c int
		if err := e.pool.QueryRow(ctx, "SELECT count(*) FROM notifications WHERE status = 'delivered'").Scan(&c); err != nil {
			t.Fatal(err)
		}
		return c
	}

	// The first consumer stops after some notifications are through, with batches in flight.
	first := rabbit.NewBatchConsumer(conn, topo.SendQueue(), e.h.HandleBatch, opts)
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- first.Run(runCtx) }()
	deadline := time.Now().Add(60 * time.Second)
	for delivered() < n/5 {
		if time.Now().After(deadline) {
			t.Fatalf("only %d notifications delivered", delivered())
		}
		time.Sleep(5 * time.Millisecond)
	}
	stop()
	if err := <-done; err != nil {
		t.Fatalf("first consumer: %v", err)
	}
	stoppedAt := delivered()
	if stoppedAt == n {
		t.Log("every notification was through before the stop took effect; the stop proved little")
	}

	second := rabbit.NewBatchConsumer(conn, topo.SendQueue(), e.h.HandleBatch, opts)
	runCtx2, stop2 := context.WithCancel(ctx)
	done2 := make(chan error, 1)
	go func() { done2 <- second.Run(runCtx2) }()
	defer func() {
		stop2()
		if err := <-done2; err != nil {
			t.Errorf("second consumer: %v", err)
		}
	}()
	deadline = time.Now().Add(90 * time.Second)
	for delivered() < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d notifications delivered (%d before the stop)", delivered(), n, stoppedAt)
		}
		time.Sleep(10 * time.Millisecond)
	}
	var tokens, recorded int
	if err := e.pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM devices), (SELECT count(*) FROM deliveries WHERE outcome = 'delivered')`).
		Scan(&tokens, &recorded); err != nil {
		t.Fatal(err)
	}
	if recorded != tokens {
		t.Errorf("%d deliveries recorded delivered, want one per token (%d)", recorded, tokens)
	}
	e.fcm.mu.Lock()
	defer e.fcm.mu.Unlock()
	if len(e.fcm.tokens) != tokens {
		t.Errorf("%d distinct tokens sent, want %d", len(e.fcm.tokens), tokens)
	}
	t.Logf("%d of %d delivered when the first consumer stopped", stoppedAt, n)
}
