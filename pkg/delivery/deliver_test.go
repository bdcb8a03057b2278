package delivery

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"notify/pkg/deadletter"
	"notify/pkg/fcm"
	"notify/pkg/pgtest"
	"notify/pkg/rabbit"
	"notify/pkg/schema"
	busv1 "notify/proto/gen/notify/bus/v1"
)

// scriptedFCM answers by token prefix: "gone-" token gone, "busy-" transient (with a
// Retry-After of 30s for "busy-slow-"), "auth-" permanent, anything else delivered.
type scriptedFCM struct{}

func (scriptedFCM) SendMulticast(_ context.Context, _ fcm.Message, tokens []string) ([]fcm.Result, error) {
	out := make([]fcm.Result, len(tokens))
	for i, t := range tokens {
		out[i].Token = t
		switch {
		case strings.HasPrefix(t, "gone-"):
			out[i].Err = &fcm.SendError{Code: "UNREGISTERED", Kind: fcm.ErrTokenGone, Err: fmt.Errorf("gone")}
		case strings.HasPrefix(t, "busy-slow-"):
			out[i].Err = &fcm.SendError{Code: "QUOTA_EXCEEDED", Kind: fcm.ErrTransient, RetryAfter: 30 * time.Second, Err: fmt.Errorf("quota")}
		case strings.HasPrefix(t, "busy-"):
			out[i].Err = &fcm.SendError{Code: "UNAVAILABLE", Kind: fcm.ErrTransient, Err: fmt.Errorf("unavailable")}
		case strings.HasPrefix(t, "auth-"):
			out[i].Err = &fcm.SendError{Code: "THIRD_PARTY_AUTH_ERROR", Kind: fcm.ErrPermanent, Err: fmt.Errorf("apns")}
		default:
			out[i].MessageID = "m-" + t
		}
	}
	return out, nil
}

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

func setup(t *testing.T, maxAttempts int) (*pgtest.DB, *Store, *Deliverer, *recordingPublisher, *Notification) {
	t.Helper()
	db := pgtest.New(t)
	ctx := context.Background()
	tokens := []string{"ok-1", "ok-2", "gone-1", "busy-1", "busy-slow-1", "auth-1"}
	for i, tok := range tokens {
		if _, err := db.Pool.Exec(ctx, `INSERT INTO devices (device_id, user_id, token, platform) VALUES ($1, 'u', $2, 'android')`,
			fmt.Sprintf("d%d", i), tok); err != nil {
			t.Fatal(err)
		}
	}
	id := uuid.New()
	if _, err := db.Pool.Exec(ctx, `INSERT INTO notifications (id, caller, type, request, expires_at, status)
		VALUES ($1, 'test', 't', '{"type":"t","recipients":{"userIds":{"userIds":["u"]}},"content":{"title":"hi"}}',
		now() + interval '1 hour', 'retrying')`, id); err != nil {
		t.Fatal(err)
	}
	store := NewStore(db.Pool)
	pub := &recordingPublisher{}
	topo := rabbit.NewTopology("test", []time.Duration{10 * time.Second, 20 * time.Second, 40 * time.Second})
	d := NewDeliverer(store, scriptedFCM{}, pub, topo, slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry(),
		Options{MaxAttempts: maxAttempts, MaxConcurrentSends: 2})
	n, err := store.Load(ctx, id.String())
	if err != nil {
		t.Fatal(err)
	}
	return db, store, d, pub, n
}

func TestSendChunkSettlesEveryToken(t *testing.T) {
	t.Parallel()
	db, store, d, pub, n := setup(t, 3)
	ctx := context.Background()

	targets, next, err := store.Audience(ctx, n, "", 500)
	if err != nil || next != "" || len(targets) != 6 {
		t.Fatalf("Audience = %d targets, next %q, %v; want 6, last page", len(targets), next, err)
	}
	sum, err := d.SendChunk(ctx, n, targets, 1, false)
	if err != nil {
		t.Fatalf("SendChunk: %v", err)
	}
	if diff := cmp.Diff(Summary{Delivered: 2, Invalid: 1, Retrying: 2, Failed: 1}, sum); diff != "" {
		t.Errorf("summary (-want +got):\n%s", diff)
	}

	// One retry task for both transient tokens, at the level that honours Retry-After (25s → 40s);
	// one dead letter for the permanent failure.
	if len(pub.msgs) != 2 {
		t.Fatalf("published %d messages, want a retry and a dead letter", len(pub.msgs))
	}
	retry, dead := pub.msgs[0], pub.msgs[1]
	var rt busv1.RetryTask
	if err := proto.Unmarshal(retry.Body, &rt); err != nil {
		t.Fatal(err)
	}
	if retry.RoutingKey != "wait.40s" || retry.Headers[rabbit.AttemptHeader] != int32(2) || rt.GetAttempt() != 2 {
		t.Errorf("retry went to %s with attempt header %v / body %d; want wait.40s and attempt 2", retry.RoutingKey, retry.Headers[rabbit.AttemptHeader], rt.GetAttempt())
	}
	if diff := cmp.Diff([]string{"busy-1", "busy-slow-1"}, rt.GetTokens()); diff != "" {
		t.Errorf("retry tokens (-want +got):\n%s", diff)
	}
	var dt busv1.DeadLetterTask
	if err := proto.Unmarshal(dead.Body, &dt); err != nil {
		t.Fatal(err)
	}
	if dead.RoutingKey != rabbit.DeadKey || dt.GetReason() != deadletter.ReasonPermanentError || dt.GetErrorCode() != "THIRD_PARTY_AUTH_ERROR" {
		t.Errorf("dead letter %s %v, want reason permanent_error with THIRD_PARTY_AUTH_ERROR", dead.RoutingKey, &dt)
	}

	var c [6]int64
	var status string
	var active bool
	if err := db.Pool.QueryRow(ctx, `SELECT total, delivered, invalid, retrying, failed, expired, status,
		(SELECT active FROM devices WHERE token = 'gone-1') FROM notifications WHERE id = $1`, n.ID).
		Scan(&c[0], &c[1], &c[2], &c[3], &c[4], &c[5], &status, &active); err != nil {
		t.Fatal(err)
	}
	if c != [6]int64{6, 2, 1, 2, 1, 0} || status != "retrying" || active {
		t.Errorf("counts %v status %s, gone token active=%v; want [6 2 1 2 1 0] retrying and deactivated", c, status, active)
	}

	// A retry that now delivers moves the counts, and the last transient failure with no
	// attempts left is dead-lettered as retries_exhausted.
	left, err := store.Unsettled(ctx, n, []string{"busy-1", "busy-slow-1", "ok-1"})
	if err != nil || len(left) != 2 {
		t.Fatalf("Unsettled = %v, %v; want the two retrying tokens", left, err)
	}
	pub.msgs = nil
	sum, err = d.SendChunk(ctx, n, left, 3, false)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Failed != 2 || len(pub.msgs) != 1 {
		t.Fatalf("last attempt: %+v with %d messages; want 2 failed in one dead letter", sum, len(pub.msgs))
	}
	if err := proto.Unmarshal(pub.msgs[0].Body, &dt); err != nil || dt.GetReason() != deadletter.ReasonRetriesExhausted || dt.GetAttempts() != 3 {
		t.Errorf("dead letter %v (%v), want retries_exhausted after 3 attempts", &dt, err)
	}
	if err := db.Pool.QueryRow(ctx, `SELECT total, delivered, invalid, retrying, failed, expired, status
		FROM notifications WHERE id = $1`, n.ID).Scan(&c[0], &c[1], &c[2], &c[3], &c[4], &c[5], &status); err != nil {
		t.Fatal(err)
	}
	if c != [6]int64{6, 2, 1, 0, 3, 0} || status != "failed" {
		t.Errorf("counts %v status %s; want [6 2 1 0 3 0] failed", c, status)
	}
}

func TestSendChunkAfterTTLRecordsExpired(t *testing.T) {
	t.Parallel()
	db, store, d, pub, n := setup(t, 3)
	ctx := context.Background()
	targets, _, err := store.Audience(ctx, n, "", 500)
	if err != nil {
		t.Fatal(err)
	}
	n.ExpiresAt = time.Now().Add(-time.Second)
	sum, err := d.SendChunk(ctx, n, targets, 2, false)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Expired != 6 || len(pub.msgs) != 0 {
		t.Errorf("expired chunk: %+v, %d messages; want 6 expired, nothing published or alerted", sum, len(pub.msgs))
	}
	var status string
	if err := db.Pool.QueryRow(ctx, "SELECT status FROM notifications WHERE id = $1", n.ID).Scan(&status); err != nil || status != "expired" {
		t.Errorf("status %q (%v), want expired", status, err)
	}
}

func TestRecordIsAtomic(t *testing.T) {
	t.Parallel()
	db, store, _, _, n := setup(t, 3)
	ctx := context.Background()
	// The second outcome breaks the outcome check: nothing of the chunk may remain.
	err := store.Record(ctx, n.ID, []Outcome{
		{Target: Target{Token: "gone-1"}, Outcome: schema.OutcomeInvalid, Attempts: 1, ErrorCode: "UNREGISTERED"},
		{Target: Target{Token: "ok-1"}, Outcome: "bogus", Attempts: 1},
	})
	if err == nil {
		t.Fatal("Record with an invalid outcome succeeded")
	}
	var rows, total int
	var active bool
	if err := db.Pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM deliveries), (SELECT total FROM notifications WHERE id = $1),
		(SELECT active FROM devices WHERE token = 'gone-1')`, n.ID).Scan(&rows, &total, &active); err != nil {
		t.Fatal(err)
	}
	if rows != 0 || total != 0 || !active {
		t.Errorf("after a failed Record: %d deliveries, total %d, dead token active=%v; want nothing changed", rows, total, active)
	}
}
