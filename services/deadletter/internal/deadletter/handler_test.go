package deadletter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus/testutil"
	amqp "github.com/rabbitmq/amqp091-go"

	dlq "notify/pkg/deadletter"
	"notify/pkg/rabbit"
	"notify/pkg/rabbit/rabbittest"
	busv1 "notify/proto/gen/notify/bus/v1"
)

// storedRow is a dead_letters row as the tests read it.
type storedRow struct {
	MessageID      string
	NotificationID string
	Reason         string
	ErrorCode      string
	ErrorMessage   string
	Attempts       int
	TokenCount     int
	Tokens         []string
	MessageType    string
	Message        []byte
	Headers        map[string]any
	Alerted        bool
}

func readRows(t *testing.T, pool *pgxpool.Pool) []storedRow {
	t.Helper()
	rows, err := pool.Query(context.Background(), `
		SELECT message_id, coalesce(notification_id::text, ''), reason, coalesce(error_code, ''),
		       coalesce(error_message, ''), attempts, token_count, tokens, coalesce(message_type, ''),
		       message, headers, alerted_at IS NOT NULL
		FROM dead_letters ORDER BY id`)
	if err != nil {
		t.Fatalf("read dead letters: %v", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (storedRow, error) {
		var s storedRow
		var headers []byte
		err := r.Scan(&s.MessageID, &s.NotificationID, &s.Reason, &s.ErrorCode, &s.ErrorMessage, &s.Attempts,
			&s.TokenCount, &s.Tokens, &s.MessageType, &s.Message, &headers, &s.Alerted)
		if err == nil && headers != nil {
			err = json.Unmarshal(headers, &s.Headers)
		}
		s.ErrorMessage = stableProtoErr(s.ErrorMessage)
		return s, err
	})
	if err != nil {
		t.Fatalf("read dead letters: %v", err)
	}
	return out
}

func publish(t *testing.T, e *env, msgs ...rabbit.Message) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := e.pub.Publish(ctx, msgs...); err != nil {
		t.Fatalf("publish: %v", err)
	}
}

func deadLetterMessage(t *testing.T, task *busv1.DeadLetterTask) rabbit.Message {
	t.Helper()
	m, err := dlq.Message(task)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestDeadLetterTaskStoredOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 0)
	notificationID := uuid.NewString()
	original := []byte{1, 2, 3}
	m := deadLetterMessage(t, &busv1.DeadLetterTask{
		NotificationId: notificationID, Reason: dlq.ReasonRetriesExhausted,
		ErrorCode: "UNAVAILABLE", ErrorMessage: "fcm unavailable", Attempts: 8,
		Tokens: []string{"tok-1", "tok-2", "tok-3"}, Original: original, OriginalType: typeRetry,
	})
	publish(t, e, m, m) // the same message twice: at-least-once delivery

	h, _ := startConsumer(t, e, e.conn, 2)
	waitFor(t, 10*time.Second, "both deliveries handled", func() bool {
		return testutil.ToFloat64(h.stored.WithLabelValues(dlq.ReasonRetriesExhausted))+testutil.ToFloat64(h.duplicates) == 2
	})

	want := []storedRow{{
		MessageID: m.MessageID, NotificationID: notificationID, Reason: dlq.ReasonRetriesExhausted,
		ErrorCode: "UNAVAILABLE", ErrorMessage: "fcm unavailable", Attempts: 8, TokenCount: 3,
		Tokens: []string{"tok-1", "tok-2", "tok-3"}, MessageType: typeRetry, Message: original,
		Headers: map[string]any{dlq.ReasonHeader: dlq.ReasonRetriesExhausted, rabbit.AttemptHeader: 8.0, "x-notify-tokens": "3"},
	}}
	got := readRows(t, e.db.Pool)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("rows mismatch (-want +got):\n%s", diff)
	}
	if n := testutil.ToFloat64(h.duplicates); n != 1 {
		t.Errorf("duplicates = %v, want 1", n)
	}
	if d := queueDepth(t, e, e.topo.DeadQueue()); d != 0 {
		t.Errorf("dead queue holds %d messages, want 0", d)
	}
}

// TestBrokerDeadLettered sends our own tasks through the real send and retry queues and lets
// the broker dead-letter them, as it does when a consumer rejects a message or crash-loops.
func TestBrokerDeadLettered(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		key        string // where the task is published
		settle     error  // what the work queue's handler returns
		body       func(id string) []byte
		typ        string
		status     string // the notification's status before
		wantStatus string
		want       func(id string) storedRow
	}{
		{
			name: "send task rejected fails its pending notification", key: rabbit.SendKey,
			settle: rabbit.Reject(errors.New("poison")), typ: typeSend,
			body:   func(id string) []byte { return marshal(t, &busv1.SendTask{NotificationId: id, Cause: "publish"}) },
			status: "pending", wantStatus: "failed",
			want: func(id string) storedRow {
				return storedRow{NotificationID: id, Reason: "rejected", Tokens: []string{}, MessageType: typeSend,
					ErrorMessage: "dead-lettered by the broker from %s (rejected)"}
			},
		},
		{
			name: "send task rejected leaves a delivered notification alone", key: rabbit.SendKey,
			settle: rabbit.Reject(errors.New("poison")), typ: typeSend,
			body:   func(id string) []byte { return marshal(t, &busv1.SendTask{NotificationId: id, Cause: "replay"}) },
			status: "delivered", wantStatus: "delivered",
			want: func(id string) storedRow {
				return storedRow{NotificationID: id, Reason: "rejected", Tokens: []string{}, MessageType: typeSend,
					ErrorMessage: "dead-lettered by the broker from %s (rejected)"}
			},
		},
		{
			name: "retry task over the delivery limit", key: rabbit.RetryKey,
			settle: rabbit.Requeue(errors.New("crash loop")), typ: typeRetry,
			body: func(id string) []byte {
				return marshal(t, &busv1.RetryTask{NotificationId: id, Tokens: []string{"t1"}, Attempt: 2, LastErrorCode: "INTERNAL"})
			},
			status: "retrying", wantStatus: "retrying",
			want: func(id string) storedRow {
				return storedRow{NotificationID: id, Reason: "delivery_limit", ErrorCode: "INTERNAL", Attempts: 2, TokenCount: 1,
					Tokens: []string{"t1"}, MessageType: typeRetry, ErrorMessage: "dead-lettered by the broker from %s (delivery_limit)"}
			},
		},
		{
			name: "undecodable send task rejected", key: rabbit.SendKey,
			settle: rabbit.Reject(errors.New("poison")), typ: typeSend,
			body:   func(string) []byte { return []byte("definitely not protobuf") },
			status: "pending", wantStatus: "pending",
			want: func(string) storedRow {
				return storedRow{Reason: dlq.ReasonUndecodable, Tokens: []string{}, MessageType: typeSend,
					ErrorMessage: "dead-lettered by the broker from %s (rejected); body is not a notify.bus.v1.SendTask: proto: cannot parse invalid wire-format data"}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, 1)
			id := insertNotification(t, e.db.Pool, tt.status)
			body := tt.body(id)
			publish(t, e, rabbit.Message{RoutingKey: tt.key, MessageID: "outbox-1", Type: tt.typ, Body: body})

			workQueue := e.topo.Name + "." + tt.key
			runUntilStopped(t, "work consumer", rabbit.NewConsumer(e.conn, workQueue, func(ctx context.Context, d *rabbit.Delivery) error {
				return tt.settle
				// Each requeue goes back through the broker, as a crash loop's redeliveries do.
			}, rabbit.ConsumerOptions{MinRequeuePause: time.Millisecond, HoldFor: time.Nanosecond}).Run)
			h, _ := startConsumer(t, e, e.conn, 1)
			waitFor(t, 10*time.Second, "a stored dead letter", func() bool { return count(t, e.db.Pool, `SELECT count(*) FROM dead_letters`) > 0 })

			want := tt.want(id)
			want.MessageID, want.Message = "outbox-1", body
			want.ErrorMessage = fmt.Sprintf(want.ErrorMessage, workQueue)
			got := readRows(t, e.db.Pool)
			if diff := cmp.Diff([]storedRow{want}, got, cmp.FilterPath(func(p cmp.Path) bool {
				return p.Last().String() == ".Headers"
			}, cmp.Ignore())); diff != "" {
				t.Errorf("rows mismatch (-want +got):\n%s", diff)
			}
			if len(got) == 1 && got[0].Headers["x-death"] == nil {
				t.Errorf("headers %v lack the broker's x-death", got[0].Headers)
			}
			if s := notificationStatus(t, e.db.Pool, id); s != tt.wantStatus {
				t.Errorf("notification status = %s, want %s", s, tt.wantStatus)
			}
			if n := testutil.ToFloat64(h.saveErrors); n != 0 {
				t.Errorf("save errors = %v, want 0", n)
			}
		})
	}
}

// TestUnreadableMessages publishes straight to the dead queue what nobody should: each is
// stored once with its raw body and headers, and nothing is requeued.
func TestUnreadableMessages(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 0)
	garbage := []byte{0xff, 0x00, 0xfe}
	noID := amqp.Publishing{Type: "acme.v1.Order", Body: []byte(`{"order":1}`), Headers: amqp.Table{"source": "acme"}}
	publishRaw(t, e, rabbit.DeadKey,
		amqp.Publishing{MessageId: "garbage", Type: typeDeadLetter, Body: garbage, Headers: amqp.Table{"weird": "a\x00b"}},
		amqp.Publishing{MessageId: "no-type", Body: []byte("hello")},
		noID, noID, // without MessageId, twice: one row
	)
	h, _ := startConsumer(t, e, e.conn, 2)
	waitFor(t, 10*time.Second, "four deliveries handled", func() bool {
		return testutil.ToFloat64(h.stored.WithLabelValues(dlq.ReasonUndecodable))+
			testutil.ToFloat64(h.stored.WithLabelValues(ReasonUnknownMessage))+testutil.ToFloat64(h.duplicates) == 4
	})

	got := readRows(t, e.db.Pool)
	byID := map[string]storedRow{}
	for _, r := range got {
		byID[r.MessageID] = r
	}
	if len(got) != 3 {
		t.Fatalf("got %d rows, want 3: %+v", len(got), got)
	}
	want := map[string]storedRow{
		"garbage": {MessageID: "garbage", Reason: dlq.ReasonUndecodable, MessageType: typeDeadLetter, Message: garbage, Tokens: []string{},
			ErrorMessage: "body is not a notify.bus.v1.DeadLetterTask: proto: cannot parse invalid wire-format data",
			Headers:      map[string]any{"weird": "a\uFFFDb"}},
		"no-type": {MessageID: "no-type", Reason: ReasonUnknownMessage, Message: []byte("hello"), Tokens: []string{},
			ErrorMessage: `message of type "" is not a notify.bus.v1.DeadLetterTask`},
	}
	for _, r := range got {
		if r.MessageID != "garbage" && r.MessageID != "no-type" {
			want[r.MessageID] = storedRow{MessageID: r.MessageID, Reason: ReasonUnknownMessage, MessageType: "acme.v1.Order",
				Message: []byte(`{"order":1}`), Tokens: []string{}, Headers: map[string]any{"source": "acme"},
				ErrorMessage: `message of type "acme.v1.Order" is not a notify.bus.v1.DeadLetterTask`}
		}
	}
	if diff := cmp.Diff(want, byID); diff != "" {
		t.Errorf("rows mismatch (-want +got):\n%s", diff)
	}
	if n := testutil.ToFloat64(h.saveErrors); n != 0 {
		t.Errorf("save errors = %v, want 0 (something was requeued)", n)
	}
	if d := queueDepth(t, e, e.topo.DeadQueue()); d != 0 {
		t.Errorf("dead queue holds %d messages, want 0", d)
	}
}

// TestDatabaseDownRequeues stores nothing while the database refuses, requeues with a pause
// instead of spinning, and stores the message once the database is back.
func TestDatabaseDownRequeues(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 0)
	ctx := context.Background()
	if _, err := e.db.Pool.Exec(ctx, `ALTER TABLE dead_letters RENAME TO dead_letters_away`); err != nil {
		t.Fatal(err)
	}
	publish(t, e, deadLetterMessage(t, &busv1.DeadLetterTask{NotificationId: uuid.NewString(), Reason: dlq.ReasonPermanentError}))
	h, _ := startConsumer(t, e, e.conn, 2)
	waitFor(t, 10*time.Second, "failed saves", func() bool { return testutil.ToFloat64(h.saveErrors) >= 2 })
	time.Sleep(300 * time.Millisecond)
	// Pauses of 50, 100, 200, 200… ms: a spinning handler would fail thousands of times.
	if n := testutil.ToFloat64(h.saveErrors); n > 10 {
		t.Errorf("%v failed saves in about half a second: requeueing does not pause", n)
	}
	if _, err := e.db.Pool.Exec(ctx, `ALTER TABLE dead_letters_away RENAME TO dead_letters`); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the dead letter stored", func() bool {
		return count(t, e.db.Pool, `SELECT count(*) FROM dead_letters WHERE reason = 'permanent_error'`) == 1
	})
}

// TestStopMidBurst kills the connection of a consumer half-way through a burst (acks in
// flight are lost, so some stored messages come back), stops it, and starts another
// consumer: every message ends up stored exactly once.
func TestStopMidBurst(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 0)
	const n = 1000
	msgs := make([]rabbit.Message, n)
	ids := make([]string, n)
	for i := range msgs {
		msgs[i] = deadLetterMessage(t, &busv1.DeadLetterTask{NotificationId: uuid.NewString(), Reason: dlq.ReasonRetriesExhausted, Tokens: []string{"t"}})
		ids[i] = msgs[i].MessageID
	}
	publish(t, e, msgs...)

	firstName := e.topo.Name + ".first"
	first := rabbittest.StartConn(t, e.amqpURL, rabbit.ConnOptions{Name: firstName, Topology: &e.topo})
	brokerName := rabbittest.BrokerName(t, firstName)
	_, stopFirst := startConsumer(t, e, first, 4)
	waitFor(t, 20*time.Second, "a quarter stored", func() bool { return count(t, e.db.Pool, `SELECT count(*) FROM dead_letters`) >= n/4 })
	rabbittest.CloseConnection(t, brokerName)
	stopFirst()
	t.Logf("%d of %d stored when the first consumer was killed", count(t, e.db.Pool, `SELECT count(*) FROM dead_letters`), n)

	second, _ := startConsumer(t, e, e.conn, 4)
	waitFor(t, 20*time.Second, "every message stored", func() bool { return count(t, e.db.Pool, `SELECT count(*) FROM dead_letters`) >= n })
	time.Sleep(200 * time.Millisecond) // let any redelivery land

	var got []string
	rows, err := e.db.Pool.Query(context.Background(), `SELECT message_id FROM dead_letters ORDER BY message_id COLLATE "C"`)
	if err != nil {
		t.Fatal(err)
	}
	got, err = pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	want := append([]string(nil), ids...)
	slices.Sort(want)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("stored message ids mismatch (-want +got):\n%s", diff)
	}
	if d := queueDepth(t, e, e.topo.DeadQueue()); d != 0 {
		t.Errorf("dead queue holds %d messages, want 0", d)
	}
	t.Logf("the second consumer found %v already stored", testutil.ToFloat64(second.duplicates))
}
