package sender

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	amqp "github.com/rabbitmq/amqp091-go"
	"google.golang.org/protobuf/proto"

	"notify/pkg/delivery"
	"notify/pkg/fcm"
	"notify/pkg/fcmemu"
	"notify/pkg/pgtest"
	"notify/pkg/rabbit"
	"notify/pkg/rabbit/rabbittest"
	"notify/pkg/testenv"
	busv1 "notify/proto/gen/notify/bus/v1"
)

// TestRedeliveredTaskDoesNotDeadLetterTwice: a sender records a notification's outcomes
// (one token delivered, one refused for good and dead-lettered, one waiting for a retry, so
// the notification is RETRYING, not final) and its ack is lost: the broker delivers the
// task again. The redelivery sends nothing: the failed token is neither sent to FCM nor
// dead-lettered a second time. A replay (replay_count raised, a new task) then does send
// the failed token again, and dead-letters it again when it fails again. Real PostgreSQL,
// RabbitMQ, the real FCM SDK and the emulator.
func TestRedeliveredTaskDoesNotDeadLetterTwice(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := pgtest.New(t)
	amqpURL := testenv.AMQPURL(t)
	topo := rabbittest.Topology(t, amqpURL, "sender", rabbit.NewTopology("", []time.Duration{time.Hour}))
	conn := rabbittest.StartConn(t, amqpURL, rabbit.ConnOptions{Name: topo.Name, Topology: &topo})
	pub := rabbit.NewPublisher(conn, topo.Exchange(), rabbit.PublisherOptions{})

	emu := fcmemu.New(fcmemu.Config{})
	srv := httptest.NewServer(emu)
	t.Cleanup(srv.Close)
	client, err := fcm.New(ctx, fcm.Config{ProjectID: "demo", Endpoint: srv.URL + "/v1"})
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	store := delivery.NewStore(db.Pool)
	d := delivery.NewDeliverer(store, client, pub, topo, log, prometheus.NewRegistry(), delivery.Options{MaxAttempts: 3, MaxConcurrentSends: 4})
	h := NewHandler(store, d, log, prometheus.NewRegistry(), 1)

	// ok-1 is delivered, autherr-1 refused for good (dead-lettered at once), internal-1
	// fails transiently (handed to the retry queue, which nobody consumes here).
	id := uuid.New()
	if _, err := db.Pool.Exec(ctx, `INSERT INTO devices (device_id, user_id, token, platform)
		VALUES ('d1', 'ana', 'ok-1', 'android'), ('d2', 'ana', 'autherr-1', 'android'), ('d3', 'ana', 'internal-1', 'android')`); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Pool.Exec(ctx, `INSERT INTO notifications (id, caller, type, request, expires_at)
		VALUES ($1, 'test', 't', '{"type":"t","recipients":{"userIds":{"userIds":["ana"]}},"content":{"title":"hi"}}', now() + interval '1 hour')`,
		id); err != nil {
		t.Fatal(err)
	}

	// The first delivery of a task is handled in full and then handed back unacknowledged, as
	// when a sender dies (or loses its channel) between its commit and its ack; the broker
	// delivers it again.
	var handled atomic.Int32
	done := make(chan struct{}, 4)
	startBatchConsumer(t, conn, topo.SendQueue(), func(ctx context.Context, ds []*rabbit.Delivery) []error {
		errs := h.HandleBatch(ctx, ds)
		defer func() { done <- struct{}{} }()
		if handled.Add(1) == 1 {
			if errs[0] != nil {
				t.Errorf("first handling: %v", errs[0])
			}
			return []error{rabbit.Requeue(errLostAck)}
		}
		if !ds[0].Redelivered && handled.Load() == 2 {
			t.Error("the second handling was not of a redelivered task")
		}
		return errs
	}, rabbit.ConsumerOptions{Concurrency: 1, BatchSize: 1, MinRequeuePause: time.Millisecond})

	publishTask := func(cause string) {
		t.Helper()
		body, err := proto.Marshal(&busv1.SendTask{NotificationId: id.String(), Cause: cause})
		if err != nil {
			t.Fatal(err)
		}
		if err := pub.Publish(ctx, rabbit.Message{RoutingKey: rabbit.SendKey, MessageID: uuid.NewString(),
			Type: "notify.bus.v1.SendTask", Body: body}); err != nil {
			t.Fatal(err)
		}
	}
	wait := func(what string) {
		t.Helper()
		select {
		case <-done:
		case <-time.After(90 * time.Second):
			t.Fatalf("timed out waiting for %s", what)
		}
	}
	publishTask("publish")
	wait("the first handling")
	wait("the redelivery")

	if got := emu.Token("autherr-1").Received; got != 1 {
		t.Errorf("autherr-1 sent %d times to FCM after a redelivery, want 1", got)
	}
	if got := emu.Token("ok-1").Received; got != 1 {
		t.Errorf("ok-1 sent %d times, want 1", got)
	}
	if got := emu.Token("internal-1").Received; got != 1 {
		t.Errorf("internal-1 sent %d times by the sender, want 1 (the retrier owns it)", got)
	}
	if got := queueDepth(t, amqpURL, topo.DeadQueue()); got != 1 {
		t.Errorf("%d dead-letter tasks after a redelivery, want 1", got)
	}
	wantOutcomes(t, db.Pool, id, "retrying", map[string]string{"ok-1": "delivered", "autherr-1": "failed", "internal-1": "retrying"}, 1)

	// A replay is a new generation: the failed token is sent again (and, failing again, is
	// dead-lettered again); what was delivered or waits for a retry is not.
	if _, err := db.Pool.Exec(ctx, `UPDATE notifications SET status = 'pending', replay_count = replay_count + 1 WHERE id = $1`, id); err != nil {
		t.Fatal(err)
	}
	publishTask("replay")
	wait("the replay")
	if got := emu.Token("autherr-1").Received; got != 2 {
		t.Errorf("autherr-1 sent %d times after a replay, want 2", got)
	}
	if got := emu.Token("ok-1").Received + emu.Token("internal-1").Received; got != 2 {
		t.Errorf("ok-1 and internal-1 sent %d times in all after a replay, want 2 (once each)", got)
	}
	if got := queueDepth(t, amqpURL, topo.DeadQueue()); got != 2 {
		t.Errorf("%d dead-letter tasks after a replay, want 2", got)
	}
	wantOutcomes(t, db.Pool, id, "retrying", map[string]string{"ok-1": "delivered", "autherr-1": "failed", "internal-1": "retrying"}, 1)
}

var errLostAck = errors.New("the ack was lost")

// wantOutcomes checks the notification's status, its tokens' outcomes and how many of its
// deliveries are failed in generation gen (its replay_count: the one that dead-lettered them).
func wantOutcomes(t *testing.T, pool *pgxpool.Pool, id uuid.UUID, status string, outcomes map[string]string, failedInGen int) {
	t.Helper()
	ctx := context.Background()
	var st string
	var failed, failedHere int
	if err := pool.QueryRow(ctx, `SELECT status, failed,
		(SELECT count(*) FROM deliveries x WHERE x.notification_id = n.id AND x.outcome = 'failed' AND x.dead_letter_generation = n.replay_count)
		FROM notifications n WHERE id = $1`, id).Scan(&st, &failed, &failedHere); err != nil {
		t.Fatal(err)
	}
	if st != status || failed != failedInGen || failedHere != failedInGen {
		t.Errorf("status %s with %d failed, %d of them dead-lettered in its generation; want %s, %d, %d", st, failed, failedHere, status, failedInGen, failedInGen)
	}
	rows, err := pool.Query(ctx, `SELECT token, outcome FROM deliveries WHERE notification_id = $1`, id)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	got := map[string]string{}
	for rows.Next() {
		var tok, o string
		if err := rows.Scan(&tok, &o); err != nil {
			t.Fatal(err)
		}
		got[tok] = o
	}
	for tok, o := range outcomes {
		if got[tok] != o {
			t.Errorf("token %s: outcome %q, want %q", tok, got[tok], o)
		}
	}
}

// queueDepth returns how many messages wait in queue (none is consumed in these tests).
func queueDepth(t *testing.T, amqpURL, queue string) int {
	t.Helper()
	c, err := amqp.Dial(amqpURL)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ch, err := c.Channel()
	if err != nil {
		t.Fatal(err)
	}
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	return q.Messages
}
