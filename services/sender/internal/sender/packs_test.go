package sender

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"notify/pkg/deadletter"
	"notify/pkg/rabbit"
	"notify/pkg/sendpack"
)

// packOf returns the delivery of a pack of send tasks for ids, as the relay publishes it:
// each task with its own message id and trace context.
func packOf(t *testing.T, ids ...string) *rabbit.Delivery {
	t.Helper()
	msgs := make([]rabbit.Message, len(ids))
	for i, id := range ids {
		d := sendTask(t, id)
		msgs[i] = rabbit.Message{
			RoutingKey: rabbit.SendKey, MessageID: d.MessageID, Type: sendpack.TaskType, Body: d.Body,
			Headers: map[string]any{"traceparent": fmt.Sprintf("00-%032x-%016x-01", i+1, i+1)},
		}
	}
	m, err := sendpack.Pack("outbox-pack-"+ids[0], msgs)
	if err != nil {
		t.Fatal(err)
	}
	return &rabbit.Delivery{Queue: "test.send.packed", MessageID: m.MessageID, Type: m.Type, Body: m.Body}
}

// failingPublisher refuses everything, as a broker that is down.
type failingPublisher struct{ calls int }

func (p *failingPublisher) Publish(context.Context, ...rabbit.Message) error {
	p.calls++
	return errors.New("broker down")
}

func packResults(t *testing.T, h *Handler) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for _, r := range []string{packHandled, packSplit, packDissolved, packDeadLettered, string(rabbit.Requeued)} {
		if n := testutil.ToFloat64(h.packs.WithLabelValues(r)); n > 0 {
			out[r] = n
		}
	}
	return out
}

// TestPackOneStoreFails: in a pack of small notifications, the database refuses the
// outcomes of one. The others are delivered; that one is republished on its own to the
// send queue, with its message id and trace, and the pack is acknowledged: nothing of the
// others is sent again.
func TestPackOneStoreFails(t *testing.T) {
	t.Parallel()
	e := newBatchEnv(t)
	ctx := context.Background()
	var ids []string
	for i := range 4 {
		ids = append(ids, e.notification(t, fmt.Sprintf("user%d", i), 2, time.Hour))
	}
	refuseOutcomes(t, e, "user2-%")
	republished := &recordingPublisher{}
	h := e.h.WithPacks(republished, prometheus.NewRegistry())

	if errs := h.HandlePacks(ctx, []*rabbit.Delivery{packOf(t, ids...)}); errs[0] != nil {
		t.Fatalf("pack settled with %v, want acked once its refused task is republished", errs[0])
	}
	if len(republished.msgs) != 1 {
		t.Fatalf("republished %d messages, want the refused notification's task alone", len(republished.msgs))
	}
	m := republished.msgs[0]
	want := sendTask(t, ids[2])
	if m.RoutingKey != rabbit.SendKey || m.Type != sendpack.TaskType || m.MessageID != want.MessageID ||
		string(m.Body) != string(want.Body) || m.Headers["traceparent"] != fmt.Sprintf("00-%032x-%016x-01", 3, 3) {
		t.Errorf("republished %+v, want the task of %s on its own to %q with its id and trace", m, ids[2], rabbit.SendKey)
	}
	for i, id := range ids {
		status, delivered := e.status(t, id)
		if i == 2 && (status != "pending" || delivered != 0) || i != 2 && (status != "delivered" || delivered != 2) {
			t.Errorf("notification %d: %s with %d delivered", i, status, delivered)
		}
	}
	if diff := cmp.Diff(map[string]float64{packSplit: 1}, packResults(t, h)); diff != "" {
		t.Errorf("notify_send_packs_total (-want +got):\n%s", diff)
	}
}

// refuseOutcomes makes the database refuse every delivery of the tokens LIKE pattern.
func refuseOutcomes(t *testing.T, e *batchEnv, pattern string) {
	t.Helper()
	if _, err := e.pool.Exec(context.Background(), fmt.Sprintf(`
		CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			IF NEW.token LIKE %s THEN
				RAISE EXCEPTION 'refusing %%', NEW.token;
			END IF;
			RETURN NEW;
		END $$;
		CREATE TRIGGER refuse_poison BEFORE INSERT OR UPDATE ON deliveries FOR EACH ROW EXECUTE FUNCTION refuse_poison()`,
		"'"+pattern+"'")); err != nil {
		t.Fatal(err)
	}
}

// TestPackRequeuedWhenRepublishFails: a task of the pack is not settled and the broker
// refuses its republishing: the pack goes back whole; when it comes back it is dissolved
// (every task on its own, none sent there), and on their own the settled ones are
// acknowledged as duplicates without a second send.
func TestPackRequeuedWhenRepublishFails(t *testing.T) {
	t.Parallel()
	e := newBatchEnv(t)
	ctx := context.Background()
	ids := []string{e.notification(t, "a", 1, time.Hour), e.notification(t, "b", 1, time.Hour), e.notification(t, "c", 1, time.Hour)}
	refuseOutcomes(t, e, "b-%")
	down := &failingPublisher{}
	h := e.h.WithPacks(down, prometheus.NewRegistry())

	pack := packOf(t, ids...)
	if errs := h.HandlePacks(ctx, []*rabbit.Delivery{pack}); rabbit.SettlementOf(errs[0]) != rabbit.Requeued {
		t.Fatalf("pack settled with %v, want requeued", errs[0])
	}
	if down.calls != 1 {
		t.Errorf("%d republish attempts, want 1", down.calls)
	}

	// It comes back, to a sender whose broker works.
	republished := &recordingPublisher{}
	h2 := NewHandler(e.h.store, e.h.deliverer, e.h.log, prometheus.NewRegistry(), 3).WithPacks(republished, prometheus.NewRegistry())
	pack.Redelivered = true
	sends := len(e.fcm.sizes)
	if errs := h2.HandlePacks(ctx, []*rabbit.Delivery{pack}); errs[0] != nil {
		t.Fatalf("redelivered pack settled with %v, want acked", errs[0])
	}
	if len(e.fcm.sizes) != sends {
		t.Errorf("the redelivered pack sent %d multicasts, want none (dissolved)", len(e.fcm.sizes)-sends)
	}
	if len(republished.msgs) != 3 {
		t.Fatalf("dissolved into %d messages, want 3", len(republished.msgs))
	}
	singles := make([]*rabbit.Delivery, len(republished.msgs))
	for i, m := range republished.msgs {
		singles[i] = &rabbit.Delivery{MessageID: m.MessageID, Type: m.Type, Headers: m.Headers, Body: m.Body}
	}
	if _, err := e.pool.Exec(ctx, "DROP TRIGGER refuse_poison ON deliveries"); err != nil {
		t.Fatal(err)
	}
	for i, err := range h2.HandleBatch(ctx, singles) {
		if err != nil {
			t.Errorf("dissolved task %d: %v, want acked", i, err)
		}
	}
	if len(e.fcm.sizes) != sends+1 {
		t.Errorf("%d multicasts for the dissolved tasks, want 1 (b's; a and c were settled)", len(e.fcm.sizes)-sends)
	}
	for _, id := range ids {
		if status, delivered := e.status(t, id); status != "delivered" || delivered != 1 {
			t.Errorf("notification %s: %s with %d delivered, want delivered with 1", id, status, delivered)
		}
	}
	if diff := cmp.Diff(map[string]float64{packDissolved: 1}, packResults(t, h2)); diff != "" {
		t.Errorf("notify_send_packs_total (-want +got):\n%s", diff)
	}
}

// TestPackHandledWhole: a pack whose tasks all settle is acknowledged with nothing
// republished; one that is not a pack is dead-lettered as undecodable.
func TestPackHandledWhole(t *testing.T) {
	t.Parallel()
	e := newBatchEnv(t)
	ctx := context.Background()
	ids := []string{e.notification(t, "a", 2, time.Hour), e.notification(t, "b", 1, time.Hour)}
	republished := &recordingPublisher{}
	h := e.h.WithPacks(republished, prometheus.NewRegistry())

	garbage := &rabbit.Delivery{MessageID: "garbage", Type: sendpack.Type, Body: []byte("\xff\xff not a pack")}
	errs := h.HandlePacks(ctx, []*rabbit.Delivery{packOf(t, ids...), garbage})
	if errs[0] != nil || errs[1] != nil {
		t.Fatalf("settled with %v, want both acked", errs)
	}
	if len(republished.msgs) != 0 {
		t.Errorf("republished %d messages, want none", len(republished.msgs))
	}
	for _, id := range ids {
		if status, _ := e.status(t, id); status != "delivered" {
			t.Errorf("notification %s is %s, want delivered", id, status)
		}
	}
	if diff := cmp.Diff([]string{deadletter.ReasonUndecodable}, e.pub.deadReasons()); diff != "" {
		t.Errorf("dead letters (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[string]float64{packHandled: 1, packDeadLettered: 1}, packResults(t, h)); diff != "" {
		t.Errorf("notify_send_packs_total (-want +got):\n%s", diff)
	}
}
