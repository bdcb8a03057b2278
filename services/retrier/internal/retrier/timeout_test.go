package retrier

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
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

// hungFCM answers only when ctx ends, every token failed as the SDK reports a cut call.
type hungFCM struct{}

func (hungFCM) SendMulticast(ctx context.Context, _ fcm.Message, tokens []string) ([]fcm.Result, error) {
	<-ctx.Done()
	err := &fcm.SendError{Code: "TIMEOUT", Kind: fcm.ErrTransient, Err: ctx.Err()}
	out := make([]fcm.Result, len(tokens))
	for i, t := range tokens {
		out[i] = fcm.Result{Token: t, Err: err}
	}
	return out, err
}

// TestRetryTaskTimeout: RETRY_TASK_TIMEOUT keeps a retry task from being held for ever. A
// multicast that never answers is cut and its tokens go one wait level up (the task acked);
// a database that hangs hands the task back to the queue, saying why, with nothing sent.
func TestRetryTaskTimeout(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx := context.Background()
	newNotification := func() uuid.UUID {
		id := uuid.New()
		if _, err := db.Pool.Exec(ctx, `INSERT INTO notifications (id, caller, type, request, expires_at, status)
			VALUES ($1, 'test', 't', '{"type":"t","recipients":{"tokens":{"tokens":["tok-a","tok-b"]}},"content":{"title":"hi"}}',
			now() + interval '1 hour', 'retrying')`, id); err != nil {
			t.Fatal(err)
		}
		return id
	}
	handle := func(h *Handler, id uuid.UUID) error {
		t.Helper()
		done := make(chan error, 1)
		go func() {
			done <- h.Handle(ctx, &rabbit.Delivery{Queue: "test.retry", MessageID: "m-" + id.String(), Body: task([]string{"tok-a", "tok-b"}, 2)(id.String())})
		}()
		select {
		case err := <-done:
			return err
		case <-time.After(60 * time.Second):
			t.Fatal("the retry task is still held 60s after its 2s RETRY_TASK_TIMEOUT")
			return nil
		}
	}
	newHandler := func(p delivery.Pusher, pub *fakePublisher) *Handler {
		d := delivery.NewDeliverer(delivery.NewStore(db.Pool), p, pub, rabbit.NewTopology("test", []time.Duration{time.Second, 2 * time.Second}), log,
			prometheus.NewRegistry(), delivery.Options{MaxAttempts: 8, MaxConcurrentSends: 2})
		return NewHandler(delivery.NewStore(db.Pool), d, log, prometheus.NewRegistry()).WithTaskTimeout(2 * time.Second)
	}

	// One after the other: the second locks a table the first reads.
	t.Run("hung multicast", func(t *testing.T) {
		id := newNotification()
		pub := &fakePublisher{}
		if err := handle(newHandler(hungFCM{}, pub), id); err != nil {
			t.Fatalf("Handle = %v, want nil (the tokens went one wait level up)", err)
		}
		if diff := cmp.Diff([]outcome{{"tok-a", "retrying", 2}, {"tok-b", "retrying", 2}}, readOutcomes(t, db, id)); diff != "" {
			t.Errorf("outcomes (-want +got):\n%s", diff)
		}
		if len(pub.msgs) != 1 || pub.msgs[0].Headers[rabbit.AttemptHeader] != int32(3) {
			t.Errorf("handed off %d messages, want one retry task for attempt 3", len(pub.msgs))
		}
	})

	t.Run("hung database", func(t *testing.T) {
		id := newNotification()
		tx, err := db.Pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback(ctx) //nolint:errcheck // the lock goes with the test
		if _, err := tx.Exec(ctx, "LOCK TABLE deliveries IN ACCESS EXCLUSIVE MODE"); err != nil {
			t.Fatal(err)
		}
		fake := &fakeFCM{}
		err = handle(newHandler(fake, &fakePublisher{}), id)
		if rabbit.SettlementOf(err) != rabbit.Requeued || !errors.Is(err, delivery.ErrStepTimeout) || !strings.Contains(err.Error(), "RETRY_TASK_TIMEOUT 2s passed") {
			t.Errorf("Handle while the database hangs = %v, want a requeue explained by RETRY_TASK_TIMEOUT", err)
		}
		if len(fake.calls) != 0 {
			t.Errorf("%d multicasts while the tokens could not be read, want 0", len(fake.calls))
		}
	})
}
