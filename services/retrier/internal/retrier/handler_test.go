package retrier

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"

	dlq "notify/pkg/deadletter"
	"notify/pkg/delivery"
	"notify/pkg/fcm"
	"notify/pkg/pgtest"
	"notify/pkg/rabbit"
	busv1 "notify/proto/gen/notify/bus/v1"
)

// fakeFCM delivers every token and records what it was asked to send.
type fakeFCM struct {
	mu    sync.Mutex
	calls [][]string
}

func (f *fakeFCM) SendMulticast(_ context.Context, _ fcm.Message, tokens []string) ([]fcm.Result, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, slices.Clone(tokens))
	out := make([]fcm.Result, len(tokens))
	for i, t := range tokens {
		out[i] = fcm.Result{Token: t, MessageID: "m"}
	}
	return out, nil
}

// fakePublisher records what would go to the broker, or fails with err.
type fakePublisher struct {
	mu   sync.Mutex
	msgs []rabbit.Message
	err  error
}

func (p *fakePublisher) Publish(_ context.Context, msgs ...rabbit.Message) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		return p.err
	}
	p.msgs = append(p.msgs, msgs...)
	return nil
}

// outcome is a deliveries row as the test reads it.
type outcome struct {
	Token    string
	Outcome  string
	Attempts int
}

func TestHandle(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	tokens := []string{"tok-a", "tok-b"}

	type want struct {
		settlement rabbit.Settlement
		result     string     // the notify_retry_tasks_total label
		sent       [][]string // multicasts made
		outcomes   []outcome
		deadReason string // a dead-letter task published with this reason
	}
	tests := []struct {
		name      string
		expiresIn time.Duration
		settled   []string // tokens already delivered before the task arrives
		cancelled string   // the notification was cancelled; every token's outcome before the task arrives
		unknown   bool     // the task names a notification that does not exist
		// failedIn: every token was dead-lettered (failed) before the task arrives, in this
		// generation (dead_letter_generation); replays is the notification's replay_count.
		failedIn, replays *int32
		headers           map[string]any
		body              func(id string) []byte
		pubErr            error
		want              want
	}{
		{
			name: "the attempt header wins over the body", expiresIn: time.Hour,
			headers: map[string]any{rabbit.AttemptHeader: int32(5)}, body: task(tokens, 3),
			want: want{settlement: rabbit.Acked, result: "sent", sent: [][]string{tokens},
				outcomes: []outcome{{"tok-a", "delivered", 5}, {"tok-b", "delivered", 5}}},
		},
		{
			name: "the body's attempt without a header", expiresIn: time.Hour, body: task(tokens, 3),
			want: want{settlement: rabbit.Acked, result: "sent", sent: [][]string{tokens},
				outcomes: []outcome{{"tok-a", "delivered", 3}, {"tok-b", "delivered", 3}}},
		},
		{
			name: "a retry is at least the second attempt", expiresIn: time.Hour,
			headers: map[string]any{rabbit.AttemptHeader: "not a number"}, body: task(tokens, 0),
			want: want{settlement: rabbit.Acked, result: "sent", sent: [][]string{tokens},
				outcomes: []outcome{{"tok-a", "delivered", 2}, {"tok-b", "delivered", 2}}},
		},
		{
			name: "only the unsettled tokens are sent", expiresIn: time.Hour, settled: []string{"tok-a"}, body: task(tokens, 2),
			want: want{settlement: rabbit.Acked, result: "sent", sent: [][]string{{"tok-b"}},
				outcomes: []outcome{{"tok-a", "delivered", 1}, {"tok-b", "delivered", 2}}},
		},
		{
			name: "already settled tokens are acked without sending", expiresIn: time.Hour, settled: tokens, body: task(tokens, 2),
			want: want{settlement: rabbit.Acked, result: "duplicate",
				outcomes: []outcome{{"tok-a", "delivered", 1}, {"tok-b", "delivered", 1}}},
		},
		{
			name: "tokens dead-lettered in this generation are acked without sending (a redelivered task)", expiresIn: time.Hour,
			failedIn: ptr(0), replays: ptr(0), body: task(tokens, 3),
			want: want{settlement: rabbit.Acked, result: "duplicate",
				outcomes: []outcome{{"tok-a", "failed", 3}, {"tok-b", "failed", 3}}},
		},
		{
			name: "tokens dead-lettered before a replay are sent", expiresIn: time.Hour,
			failedIn: ptr(0), replays: ptr(1), body: task(tokens, 2),
			want: want{settlement: rabbit.Acked, result: "sent", sent: [][]string{tokens},
				outcomes: []outcome{{"tok-a", "delivered", 2}, {"tok-b", "delivered", 2}}},
		},
		{
			name: "an unknown notification is dead-lettered", expiresIn: time.Hour, unknown: true, body: task(tokens, 2),
			want: want{settlement: rabbit.Acked, result: "dead_lettered", deadReason: dlq.ReasonUnknownNotification},
		},
		{
			name: "an undecodable task is dead-lettered", expiresIn: time.Hour,
			body: func(string) []byte { return []byte("\xff not a RetryTask") },
			want: want{settlement: rabbit.Acked, result: "dead_lettered", deadReason: dlq.ReasonUndecodable},
		},
		{
			name: "a dead letter the broker refuses is rejected", expiresIn: time.Hour, unknown: true, body: task(tokens, 2),
			pubErr: errors.New("broker down"),
			want:   want{settlement: rabbit.Rejected, result: "rejected"},
		},
		{
			name: "a cancelled notification's retrying tokens end cancelled, unsent", expiresIn: time.Hour,
			cancelled: "retrying", body: task(tokens, 2),
			want: want{settlement: rabbit.Acked, result: "cancelled",
				outcomes: []outcome{{"tok-a", "cancelled", 1}, {"tok-b", "cancelled", 1}}},
		},
		{
			name: "tokens Cancel settled are acked without sending", expiresIn: time.Hour,
			cancelled: "cancelled", body: task(tokens, 2),
			want: want{settlement: rabbit.Acked, result: "duplicate",
				outcomes: []outcome{{"tok-a", "cancelled", 1}, {"tok-b", "cancelled", 1}}},
		},
		{
			name: "past the TTL the tokens end expired, unsent", expiresIn: -time.Minute, body: task(tokens, 4),
			want: want{settlement: rabbit.Acked, result: "sent",
				outcomes: []outcome{{"tok-a", "expired", 3}, {"tok-b", "expired", 3}}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			id := uuid.New()
			if !tt.unknown {
				if _, err := db.Pool.Exec(ctx, `INSERT INTO notifications (id, caller, type, request, expires_at, status)
					VALUES ($1, 'test', 't', '{"type":"t","recipients":{"tokens":{"tokens":["tok-a","tok-b"]}},"content":{"title":"hi"}}',
					$2, 'retrying')`, id, time.Now().Add(tt.expiresIn)); err != nil {
					t.Fatal(err)
				}
			}
			for _, tok := range tt.settled {
				if _, err := db.Pool.Exec(ctx, `INSERT INTO deliveries (notification_id, token, outcome, attempts)
					VALUES ($1, $2, 'delivered', 1)`, id, tok); err != nil {
					t.Fatal(err)
				}
			}
			if tt.failedIn != nil {
				if _, err := db.Pool.Exec(ctx, `WITH d AS (INSERT INTO deliveries (notification_id, token, outcome, attempts, dead_letter_generation)
					SELECT $1, t, 'failed', 3, $2 FROM unnest($3::text[]) AS t)
					UPDATE notifications SET total = 2, failed = 2, replay_count = $4 WHERE id = $1`,
					id, *tt.failedIn, tokens, *tt.replays); err != nil {
					t.Fatal(err)
				}
			}
			if tt.cancelled != "" {
				if _, err := db.Pool.Exec(ctx, `WITH d AS (INSERT INTO deliveries (notification_id, token, outcome, attempts)
					SELECT $1, t, $2, 1 FROM unnest($3::text[]) AS t)
					UPDATE notifications SET status = 'cancelled', total = 2,
						retrying = CASE WHEN $2 = 'retrying' THEN 2 ELSE 0 END, cancelled = CASE WHEN $2 = 'cancelled' THEN 2 ELSE 0 END
					WHERE id = $1`, id, tt.cancelled, tokens); err != nil {
					t.Fatal(err)
				}
			}

			fake, pub := &fakeFCM{}, &fakePublisher{err: tt.pubErr}
			store := delivery.NewStore(db.Pool)
			reg := prometheus.NewRegistry()
			d := delivery.NewDeliverer(store, fake, pub, rabbit.NewTopology("test", []time.Duration{time.Second}), log,
				prometheus.NewRegistry(), delivery.Options{MaxAttempts: 8, MaxConcurrentSends: 2})
			h := NewHandler(store, d, log, reg)

			err := h.Handle(ctx, &rabbit.Delivery{Queue: "test.retry", MessageID: "m-1", Headers: tt.headers, Body: tt.body(id.String())})

			if got := rabbit.SettlementOf(err); got != tt.want.settlement {
				t.Errorf("Handle = %v, settled %s; want %s", err, got, tt.want.settlement)
			}
			if n := testutil.ToFloat64(h.tasks.WithLabelValues(tt.want.result)); n != 1 {
				t.Errorf("notify_retry_tasks_total{result=%q} = %v, want 1", tt.want.result, n)
			}
			if diff := cmp.Diff(tt.want.sent, fake.calls); diff != "" {
				t.Errorf("multicasts (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.want.outcomes, readOutcomes(t, db, id), cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("outcomes (-want +got):\n%s", diff)
			}
			var reasons []string
			for _, m := range pub.msgs {
				var dead busv1.DeadLetterTask
				if err := proto.Unmarshal(m.Body, &dead); err != nil {
					t.Fatalf("published %s: %v", m.RoutingKey, err)
				}
				reasons = append(reasons, dead.GetReason())
			}
			var wantReasons []string
			if tt.want.deadReason != "" {
				wantReasons = []string{tt.want.deadReason}
			}
			if diff := cmp.Diff(wantReasons, reasons); diff != "" {
				t.Errorf("dead letters published (-want +got):\n%s", diff)
			}
		})
	}
}

// task returns a RetryTask body for tokens at attempt.
func task(tokens []string, attempt int32) func(id string) []byte {
	return func(id string) []byte {
		// Marshal fails only on invalid UTF-8 or missing required fields; this has neither.
		b, _ := proto.Marshal(&busv1.RetryTask{NotificationId: id, Tokens: tokens, Attempt: attempt, LastErrorCode: "UNAVAILABLE"})
		return b
	}
}

func readOutcomes(t *testing.T, db *pgtest.DB, id uuid.UUID) []outcome {
	t.Helper()
	rows, err := db.Pool.Query(context.Background(), `SELECT token, outcome, attempts FROM deliveries WHERE notification_id = $1 ORDER BY token`, id)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[outcome])
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func ptr(n int32) *int32 { return &n }
