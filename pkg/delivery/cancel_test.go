package delivery

import (
	"context"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"notify/pkg/fcm"
	"notify/pkg/rabbit"
	"notify/pkg/schema"
)

// countingFCM is scriptedFCM that counts the tokens it was asked to send.
type countingFCM struct {
	scriptedFCM
	tokens atomic.Int64
}

func (c *countingFCM) SendMulticast(ctx context.Context, m fcm.Message, tokens []string) ([]fcm.Result, error) {
	c.tokens.Add(int64(len(tokens)))
	return c.scriptedFCM.SendMulticast(ctx, m, tokens)
}

// TestSendChunkOfCancelledNotification: a chunk of a notification cancelled after its
// first chunk was recorded is neither sent nor recorded, and the outcomes already recorded
// do not change the status back.
func TestSendChunkOfCancelledNotification(t *testing.T) {
	t.Parallel()
	db, store, d, pub, n := setup(t, 3)
	ctx := context.Background()
	targets, _, err := store.Audience(ctx, n, "", 500)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.SendChunk(ctx, n, targets[:2], 1, false); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Pool.Exec(ctx, "UPDATE notifications SET status = $2 WHERE id = $1", n.ID, schema.StatusCancelled); err != nil {
		t.Fatal(err)
	}
	sent := len(pub.msgs)
	sum, err := d.SendChunk(ctx, n, targets[2:], 1, true)
	if err != nil {
		t.Fatal(err)
	}
	if !sum.Cancelled || sum.Delivered+sum.Invalid+sum.Retrying+sum.Failed != 0 || len(pub.msgs) != sent {
		t.Errorf("SendChunk after Cancel = %+v, %d messages handed off; want cancelled, nothing sent", sum, len(pub.msgs)-sent)
	}
	var total int64
	var status string
	if err := db.Pool.QueryRow(ctx, "SELECT total, status FROM notifications WHERE id = $1", n.ID).Scan(&total, &status); err != nil {
		t.Fatal(err)
	}
	if total != 2 || status != schema.StatusCancelled {
		t.Errorf("after the refused chunk: %d tokens recorded, status %s; want the first chunk's 2, cancelled", total, status)
	}
	// The sender's closing write keeps it cancelled too.
	if st, err := store.Finish(ctx, n.ID); err != nil || st != schema.StatusCancelled {
		t.Errorf("Finish = %q, %v; want cancelled", st, err)
	}
}

// TestRetryOfCancelledNotificationIsRecordedCancelled: a retry of a notification cancelled
// while its tokens were back in 'retrying' (a send in flight when Cancel committed put them
// back) sends nothing and settles them cancelled: no token of the notification stays
// retrying, the counts add up, the status stays cancelled and no retry task follows.
func TestRetryOfCancelledNotificationIsRecordedCancelled(t *testing.T) {
	t.Parallel()
	db, store, d, pub, n := setup(t, 3)
	ctx := context.Background()
	counting := &countingFCM{}
	d.fcm = counting
	targets, _, err := store.Audience(ctx, n, "", 500)
	if err != nil {
		t.Fatal(err)
	}
	if sum, err := d.SendChunk(ctx, n, targets, 1, true); err != nil || sum.Retrying != 2 {
		t.Fatalf("first send = %+v, %v; want 2 tokens retrying", sum, err)
	}
	if _, err := db.Pool.Exec(ctx, "UPDATE notifications SET status = $2 WHERE id = $1", n.ID, schema.StatusCancelled); err != nil {
		t.Fatal(err)
	}
	retry, err := store.Unsettled(ctx, n, []string{"busy-1", "busy-slow-1"})
	if err != nil || len(retry) != 2 {
		t.Fatalf("Unsettled = %v, %v; want the two retrying tokens", retry, err)
	}
	sent, published := counting.tokens.Load(), len(pub.msgs)
	sum, err := d.SendChunk(ctx, n, retry, 2, false)
	if err != nil {
		t.Fatal(err)
	}
	if !sum.Cancelled || sum.CancelledTokens != 2 || sum.Delivered+sum.Retrying+sum.Failed != 0 {
		t.Errorf("retry after Cancel = %+v; want cancelled, its 2 tokens recorded cancelled", sum)
	}
	if got := counting.tokens.Load() - sent; got != 0 || len(pub.msgs) != published {
		t.Errorf("retry after Cancel sent %d tokens and handed off %d messages; want none", got, len(pub.msgs)-published)
	}
	var total, delivered, invalid, retrying, failed, cancelled int64
	var status string
	if err := db.Pool.QueryRow(ctx, `SELECT total, delivered, invalid, retrying, failed, cancelled, status FROM notifications WHERE id = $1`,
		n.ID).Scan(&total, &delivered, &invalid, &retrying, &failed, &cancelled, &status); err != nil {
		t.Fatal(err)
	}
	if retrying != 0 || cancelled != 2 || total != delivered+invalid+failed+cancelled || status != schema.StatusCancelled {
		t.Errorf("after the retry: total %d = delivered %d + invalid %d + failed %d + cancelled %d, retrying %d, status %s; "+
			"want 2 cancelled, none retrying, the counts adding up, still cancelled", total, delivered, invalid, failed, cancelled, retrying, status)
	}
	var outcomes []string
	rows, _ := db.Pool.Query(ctx, `SELECT outcome, error_code, error_message FROM deliveries
		WHERE notification_id = $1 AND token LIKE 'busy-%' ORDER BY token`, n.ID)
	for rows.Next() {
		var o string
		var code, msg *string
		if err := rows.Scan(&o, &code, &msg); err != nil {
			t.Fatal(err)
		}
		outcomes = append(outcomes, o)
		// As when Cancel settles it: no error, not the transient one before the cancel.
		if code != nil || msg != nil {
			t.Errorf("a token recorded cancelled shows error %v %v, want none", ptr(code), ptr(msg))
		}
	}
	if rows.Err() != nil || len(outcomes) != 2 || outcomes[0] != schema.OutcomeCancelled || outcomes[1] != schema.OutcomeCancelled {
		t.Errorf("the retried tokens' outcomes = %v (%v), want cancelled", outcomes, rows.Err())
	}
	// A repeat of the retry task finds nothing left to send.
	if left, err := store.Unsettled(ctx, n, []string{"busy-1", "busy-slow-1"}); err != nil || len(left) != 0 {
		t.Errorf("Unsettled after the cancelled retry = %v, %v; want nothing", left, err)
	}
}

// ptr shows a nullable column for a test message.
func ptr(s *string) string {
	if s == nil {
		return "NULL"
	}
	return *s
}

// sendObserver runs at every multicast.
type sendObserver struct {
	scriptedFCM
	at func()
}

func (o sendObserver) SendMulticast(ctx context.Context, m fcm.Message, tokens []string) ([]fcm.Result, error) {
	o.at()
	return o.scriptedFCM.SendMulticast(ctx, m, tokens)
}

// TestStatusLoadedChunkGoesWithoutCancelCheck: a chunk whose notification its caller has
// just loaded (Chunk.StatusLoaded, the sender's small notifications) goes to FCM without a
// round trip before it; any other chunk is checked for a Cancel first (one round trip).
func TestStatusLoadedChunkGoesWithoutCancelCheck(t *testing.T) {
	t.Parallel()
	db, store, _, pub, n := setup(t, 3)
	ctx := context.Background()
	targets, _, err := store.Audience(ctx, n, "", 500)
	if err != nil {
		t.Fatal(err)
	}
	pool, trips := db.CountedPool(t)
	for _, loaded := range []bool{true, false} {
		var before atomic.Int64
		before.Store(-1)
		fake := sendObserver{at: func() { before.CompareAndSwap(-1, trips.N()) }}
		d := NewDeliverer(NewStore(pool), fake, pub, rabbit.NewTopology("test", []time.Duration{10 * time.Second}),
			slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry(), Options{MaxAttempts: 3, MaxConcurrentSends: 2})
		trips.Reset()
		_, errs := d.SendChunks(ctx, []Chunk{{Notification: n, Targets: targets[:1], Attempt: 1, StatusLoaded: loaded}})
		if errs[0] != nil {
			t.Fatal(errs[0])
		}
		want := int64(1)
		if loaded {
			want = 0
		}
		if got := before.Load(); got != want {
			t.Errorf("StatusLoaded %v: %d round trips before the multicast, want %d", loaded, got, want)
		}
	}
}
