package retrier

import (
	"context"
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"notify/pkg/delivery"
	"notify/pkg/pgtest"
	"notify/pkg/rabbit"
)

// TestHandleBatch hands the retrier one batch of retry tasks: two for different tokens of
// one notification, one for another notification whose outcomes the database refuses, one
// whose tokens are all settled already, and one naming no notification. Each is settled on
// its own: the refused one alone is requeued, with nothing of it recorded.
func TestHandleBatch(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	insert := func(tokens ...string) uuid.UUID {
		id := uuid.New()
		if _, err := db.Pool.Exec(ctx, `INSERT INTO notifications (id, caller, type, request, expires_at, status)
			VALUES ($1, 'test', 't', jsonb_build_object('type', 't', 'recipients', jsonb_build_object('tokens', jsonb_build_object('tokens', $2::text[])),
				'content', jsonb_build_object('title', 'hi')), now() + interval '1 hour', 'retrying')`, id, tokens); err != nil {
			t.Fatal(err)
		}
		return id
	}
	shared := insert("a1", "a2", "a3", "a4")
	refused := insert("poison-1")
	settled := insert("s1")
	if _, err := db.Pool.Exec(ctx, `INSERT INTO deliveries (notification_id, token, outcome, attempts) VALUES ($1, 's1', 'delivered', 1)`, settled); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Pool.Exec(ctx, `
		CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			IF NEW.token LIKE 'poison-%' THEN RAISE EXCEPTION 'refusing %', NEW.token; END IF;
			RETURN NEW;
		END $$;
		CREATE TRIGGER refuse_poison BEFORE INSERT OR UPDATE ON deliveries FOR EACH ROW EXECUTE FUNCTION refuse_poison()`); err != nil {
		t.Fatal(err)
	}

	fake, pub := &fakeFCM{}, &fakePublisher{}
	store := delivery.NewStore(db.Pool)
	d := delivery.NewDeliverer(store, fake, pub, rabbit.NewTopology("test", []time.Duration{time.Second}), log,
		prometheus.NewRegistry(), delivery.Options{MaxAttempts: 8, MaxConcurrentSends: 2})
	h := NewHandler(store, d, log, prometheus.NewRegistry())

	ds := []*rabbit.Delivery{
		{MessageID: "shared-1", Body: task([]string{"a1", "a2"}, 2)(shared.String())},
		{MessageID: "refused", Body: task([]string{"poison-1"}, 2)(refused.String())},
		{MessageID: "shared-2", Body: task([]string{"a3", "a4"}, 3)(shared.String())},
		{MessageID: "settled", Body: task([]string{"s1"}, 2)(settled.String())},
		{MessageID: "unknown", Body: task([]string{"x"}, 2)(uuid.NewString())},
	}
	errs := h.HandleBatch(ctx, ds)
	got := make([]rabbit.Settlement, len(errs))
	for i, err := range errs {
		got[i] = rabbit.SettlementOf(err)
	}
	want := []rabbit.Settlement{rabbit.Acked, rabbit.Requeued, rabbit.Acked, rabbit.Acked, rabbit.Acked}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("settlements (-want +got):\n%s\nerrors: %v", diff, errs)
	}
	if diff := cmp.Diff([]outcome{{"a1", "delivered", 2}, {"a2", "delivered", 2}, {"a3", "delivered", 3}, {"a4", "delivered", 3}},
		readOutcomes(t, db, shared)); diff != "" {
		t.Errorf("outcomes of the shared notification (-want +got):\n%s", diff)
	}
	if out := readOutcomes(t, db, refused); len(out) != 0 {
		t.Errorf("outcomes recorded for the refused notification: %v", out)
	}
	var sent []string
	for _, c := range fake.calls {
		sent = append(sent, c...)
	}
	slices.Sort(sent)
	if diff := cmp.Diff([]string{"a1", "a2", "a3", "a4", "poison-1"}, sent); diff != "" {
		t.Errorf("tokens sent (-want +got):\n%s", diff)
	}
	if len(pub.msgs) != 1 {
		t.Errorf("%d messages published, want 1 (the unknown notification's dead letter)", len(pub.msgs))
	}
}
