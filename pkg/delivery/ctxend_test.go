package delivery

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5"

	"notify/pkg/fcm"
	"notify/pkg/rabbit"
)

// endingFCM answers as scriptedFCM and ends the caller's ctx as it answers: the consumer's
// channel died (or a deadline passed) while the multicast was in flight.
type endingFCM struct {
	end   context.CancelFunc
	calls atomic.Int32
}

func (f *endingFCM) SendMulticast(ctx context.Context, m fcm.Message, tokens []string) ([]fcm.Result, error) {
	f.calls.Add(1)
	defer f.end()
	return scriptedFCM{}.SendMulticast(ctx, m, tokens)
}

// TestChunkSentAsCtxEndsIsRecorded: a chunk whose multicast went out is handed off and
// recorded although the caller's ctx ended meanwhile, so that the task's next consumer
// skips its tokens; a chunk whose ctx had already ended is not sent at all.
func TestChunkSentAsCtxEndsIsRecorded(t *testing.T) {
	t.Parallel()
	db, store, d, pub, n := setup(t, 3)
	targets, _, err := store.Audience(context.Background(), n, "", 500)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	f := &endingFCM{end: cancel}
	d.fcm = f

	sum, err := d.SendChunk(ctx, n, targets, 1, false)
	if err != nil {
		t.Fatalf("SendChunk whose ctx ended after the multicast: %v, want its outcomes recorded", err)
	}
	if sum.Delivered != 2 || len(pub.msgs) != 2 {
		t.Errorf("summary %+v with %d hand-offs; want 2 delivered, a retry and a dead letter", sum, len(pub.msgs))
	}
	var total int
	if err := db.Pool.QueryRow(context.Background(), "SELECT total FROM notifications WHERE id = $1", n.ID).Scan(&total); err != nil {
		t.Fatal(err)
	}
	if total != len(targets) {
		t.Errorf("%d outcomes recorded, want %d", total, len(targets))
	}
	// Nothing is left to the task's next consumer; a replay (the next generation) sends
	// the dead-lettered token again.
	left, _, err := store.Audience(context.Background(), n, "", 500)
	if err != nil || len(left) != 0 {
		t.Errorf("unsettled audience after the chunk = %+v, %v; want none", left, err)
	}
	replayed := *n
	replayed.Generation++
	left, _, err = store.Audience(context.Background(), &replayed, "", 500)
	if err != nil || len(left) != 1 || left[0].Token != "auth-1" {
		t.Errorf("unsettled audience of a replay = %+v, %v; want only auth-1", left, err)
	}

	// ctx has ended: the next chunk sends nothing and says so.
	if _, err := d.SendChunk(ctx, n, targets, 1, true); !errors.Is(err, context.Canceled) {
		t.Errorf("SendChunk with an ended ctx = %v, want context.Canceled", err)
	}
	if c := f.calls.Load(); c != 1 {
		t.Errorf("%d multicasts, want 1: nothing is sent once ctx has ended", c)
	}
}

// TestChunkSentAsChannelClosesRecordsOnlyAnswers: when the ctx ended because the task's
// channel closed (another consumer has the task now), a chunk that went out records only
// what FCM answered for good, hands off no retry (the next consumer sends the transient
// failures itself) and leaves the final status to that consumer.
func TestChunkSentAsChannelClosesRecordsOnlyAnswers(t *testing.T) {
	t.Parallel()
	db, store, d, pub, n := setup(t, 3)
	targets, _, err := store.Audience(context.Background(), n, "", 500)
	if err != nil {
		t.Fatal(err)
	}
	// A sender's task: the notification is pending while it is being sent.
	if _, err := db.Pool.Exec(context.Background(), "UPDATE notifications SET status = 'pending' WHERE id = $1", n.ID); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	d.fcm = &endingFCM{end: func() { cancel(fmt.Errorf("%w: forced close", rabbit.ErrChannelClosed)) }}

	sum, err := d.SendChunk(ctx, n, targets, 1, true)
	if err != nil {
		t.Fatalf("SendChunk whose channel closed during the multicast: %v", err)
	}
	if sum.Status != "" {
		t.Errorf("final status %q set by a handler whose channel closed, want none", sum.Status)
	}
	got := map[string]string{}
	rows, err := db.Pool.Query(context.Background(), "SELECT token, outcome FROM deliveries WHERE notification_id = $1", n.ID)
	if err != nil {
		t.Fatal(err)
	}
	var tok, outcome string
	if _, err := pgx.ForEachRow(rows, []any{&tok, &outcome}, func() error { got[tok] = outcome; return nil }); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"ok-1": "delivered", "ok-2": "delivered", "gone-1": "invalid", "auth-1": "failed"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("outcomes recorded (-want +got):\n%s", diff)
	}
	for _, m := range pub.msgs {
		if m.RoutingKey != rabbit.DeadKey {
			t.Errorf("handed off a message to %s; want only the dead letter", m.RoutingKey)
		}
	}
	var status string
	if err := db.Pool.QueryRow(context.Background(), "SELECT status FROM notifications WHERE id = $1", n.ID).Scan(&status); err != nil {
		t.Fatal(err)
	}
	if status != "pending" {
		t.Errorf("status %s, want it unchanged (pending)", status)
	}
}
