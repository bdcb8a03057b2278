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
	"github.com/prometheus/client_golang/prometheus"

	"notify/pkg/delivery"
	"notify/pkg/fcm"
	"notify/pkg/pgtest"
	"notify/pkg/rabbit"
)

// fakeFCM records the size of every multicast and delivers every token.
type fakeFCM struct {
	mu     sync.Mutex
	sizes  []int
	tokens map[string]int
}

func (f *fakeFCM) SendMulticast(_ context.Context, _ fcm.Message, tokens []string) ([]fcm.Result, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sizes = append(f.sizes, len(tokens))
	out := make([]fcm.Result, len(tokens))
	for i, t := range tokens {
		f.tokens[t]++
		out[i] = fcm.Result{Token: t, MessageID: "m"}
	}
	return out, nil
}

type noPublish struct{}

func (noPublish) Publish(context.Context, ...rabbit.Message) error { return nil }

func TestSendAllChunksAudienceInto500s(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))

	for _, tc := range []struct {
		devices int
		want    []int
	}{
		{1201, []int{201, 500, 500}},
		{500, []int{500}},
		{1, []int{1}},
	} {
		user := fmt.Sprintf("user-%d", tc.devices)
		if _, err := db.Pool.Exec(ctx, `INSERT INTO devices (device_id, user_id, token, platform)
			SELECT $1 || '-' || i, $1, $1 || '-tok-' || i, 'android' FROM generate_series(1, $2) i`, user, tc.devices); err != nil {
			t.Fatal(err)
		}
		id := uuid.New()
		if _, err := db.Pool.Exec(ctx, `INSERT INTO notifications (id, caller, type, request, expires_at)
			VALUES ($1, 'test', 't', $2, now() + interval '1 hour')`,
			id, fmt.Sprintf(`{"type":"t","recipients":{"userIds":{"userIds":[%q]}},"content":{"title":"hi"}}`, user)); err != nil {
			t.Fatal(err)
		}

		fake := &fakeFCM{tokens: map[string]int{}}
		store := delivery.NewStore(db.Pool)
		d := delivery.NewDeliverer(store, fake, noPublish{}, rabbit.NewTopology("test", []time.Duration{time.Second}), log,
			prometheus.NewRegistry(), delivery.Options{MaxAttempts: 3, MaxConcurrentSends: 4})
		h := NewHandler(store, d, log, prometheus.NewRegistry(), 3)
		n, err := store.Load(ctx, id.String())
		if err != nil {
			t.Fatal(err)
		}
		sum, err := h.sendAll(ctx, n)
		if err != nil {
			t.Fatalf("sendAll: %v", err)
		}
		slices.Sort(fake.sizes)
		if diff := cmp.Diff(tc.want, fake.sizes); diff != "" {
			t.Errorf("%d devices: multicast sizes (-want +got):\n%s", tc.devices, diff)
		}
		if sum.Delivered != tc.devices || len(fake.tokens) != tc.devices {
			t.Errorf("%d devices: delivered %d to %d distinct tokens", tc.devices, sum.Delivered, len(fake.tokens))
		}

		// A single-page audience gets its final status with its outcomes; a larger one is
		// finished by the handler after the last chunk.
		wantStatus := "delivered"
		if tc.devices >= fcm.MaxMulticast { // a full first page cannot know it is the last
			wantStatus = "pending"
		}
		var status string
		if err := db.Pool.QueryRow(ctx, "SELECT status FROM notifications WHERE id = $1", id).Scan(&status); err != nil || status != wantStatus {
			t.Errorf("%d devices: status %q after sendAll (%v), want %q", tc.devices, status, err, wantStatus)
		}

		// A redelivered task finds every token settled and sends nothing.
		fake.sizes = nil
		if _, err := h.sendAll(ctx, n); err != nil {
			t.Fatalf("sendAll again: %v", err)
		}
		if len(fake.sizes) != 0 {
			t.Errorf("%d devices: a repeated send made multicasts %v, want none", tc.devices, fake.sizes)
		}
	}
}

// cancellingFCM delivers every token and cancels the notification (as Cancel commits it)
// during its first multicast.
type cancellingFCM struct {
	fakeFCM
	cancel func()
	once   sync.Once
}

func (f *cancellingFCM) SendMulticast(ctx context.Context, m fcm.Message, tokens []string) ([]fcm.Result, error) {
	f.once.Do(f.cancel)
	return f.fakeFCM.SendMulticast(ctx, m, tokens)
}

// TestBroadcastCancelledWhileSent: a broadcast cancelled while its first chunk is at FCM
// sends no further chunk; the first chunk's outcomes are recorded (an interim record,
// committed without waiting for the disk), the status stays cancelled, and the task ends
// "cancelled" only after the sender's Finish has written the notification once more, a
// synchronous commit that makes the interim record durable before the acknowledgement.
func TestBroadcastCancelledWhileSent(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if _, err := db.Pool.Exec(ctx, `INSERT INTO devices (device_id, user_id, token, platform)
		SELECT 'd-' || i, 'u', 'tok-' || i, 'android' FROM generate_series(1, 1201) i`); err != nil {
		t.Fatal(err)
	}
	id := uuid.New()
	if _, err := db.Pool.Exec(ctx, `INSERT INTO notifications (id, caller, type, request, expires_at)
		VALUES ($1, 'test', 't', '{"type":"t","recipients":{"userIds":{"userIds":["u"]}},"content":{"title":"hi"}}', now() + interval '1 hour')`,
		id); err != nil {
		t.Fatal(err)
	}
	fake := &cancellingFCM{fakeFCM: fakeFCM{tokens: map[string]int{}}, cancel: func() {
		if _, err := db.Pool.Exec(ctx, `UPDATE notifications SET status = 'cancelled' WHERE id = $1`, id); err != nil {
			t.Error(err)
		}
	}}
	store := delivery.NewStore(db.Pool)
	d := delivery.NewDeliverer(store, fake, noPublish{}, rabbit.NewTopology("test", []time.Duration{time.Second}), log,
		prometheus.NewRegistry(), delivery.Options{MaxAttempts: 3, MaxConcurrentSends: 4})
	h := NewHandler(store, d, log, prometheus.NewRegistry(), 1) // one chunk at a time
	n, err := store.Load(ctx, id.String())
	if err != nil {
		t.Fatal(err)
	}
	got, err := h.sendLarge(ctx, n, log)
	if err != nil || got != "cancelled" {
		t.Fatalf("sendLarge = %q, %v; want cancelled", got, err)
	}
	if len(fake.sizes) != 1 {
		t.Fatalf("multicasts %v, want only the first chunk's", fake.sizes)
	}
	var status string
	var delivered, rows int
	var finishedAfter bool
	if err := db.Pool.QueryRow(ctx, `SELECT status, delivered,
		(SELECT count(*) FROM deliveries WHERE notification_id = $1 AND outcome = 'delivered'),
		-- the transaction that last wrote the notification came after the one that recorded
		-- the chunk (transaction ids of a test database are far from wrapping around)
		xmin::text::bigint > (SELECT max(xmin::text::bigint) FROM deliveries WHERE notification_id = $1)
		FROM notifications WHERE id = $1`, id).Scan(&status, &delivered, &rows, &finishedAfter); err != nil {
		t.Fatal(err)
	}
	if status != "cancelled" || delivered != fake.sizes[0] || rows != fake.sizes[0] {
		t.Errorf("status %s, delivered count %d, delivered rows %d; want cancelled and %d", status, delivered, rows, fake.sizes[0])
	}
	if !finishedAfter {
		t.Error("the notification was last written by the chunk's record: the sender did not finish it before its acknowledgement")
	}
}
