package server

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"

	"notify/pkg/pgtest"
	"notify/pkg/schema"
	"notify/pkg/tracing"
	notifyv1 "notify/proto/gen/notify/v1"
)

// remoteCtx returns a context whose span is a caller's (as the gRPC stats handler leaves
// it), with ids made from i, and its traceparent.
func remoteCtx(i int) (context.Context, string) {
	var tid trace.TraceID
	var sid trace.SpanID
	copy(tid[:], fmt.Sprintf("trace-%010d", i))
	copy(sid[:], fmt.Sprintf("s%07d", i))
	sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled, Remote: true})
	ctx := trace.ContextWithRemoteSpanContext(context.Background(), sc)
	return ctx, tracing.Traceparent(ctx)
}

// TestPublishStoresEachCallersTrace: concurrent Publish calls share group commits, yet each
// notification and its send task row keep the trace of their own call; an untraced call
// stores none. PublishBatch stores its call's trace with every item.
func TestPublishStoresEachCallersTrace(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	s := NewNotifications(db.Pool, discard, prometheus.NewRegistry(), nil, GroupCommit{MaxBatch: 8})
	const calls = 24
	ids := make([]string, calls)
	want := make([]string, calls)
	var wg sync.WaitGroup
	for i := range calls {
		ctx := context.Background()
		if i > 0 { // call 0 is untraced
			ctx, want[i] = remoteCtx(i)
		}
		wg.Go(func() {
			resp, err := s.Publish(ctx, validRequest())
			if err != nil {
				t.Errorf("Publish %d: %v", i, err)
				return
			}
			ids[i] = resp.GetNotificationId()
		})
	}
	wg.Wait()

	batchCtx, batchTrace := remoteCtx(99)
	batch, err := s.PublishBatch(batchCtx, &notifyv1.PublishBatchRequest{Requests: []*notifyv1.PublishRequest{validRequest(), validRequest()}})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range batch.GetResults() {
		ids = append(ids, r.GetAccepted().GetNotificationId())
		want = append(want, batchTrace)
	}

	for i, id := range ids {
		var task, notification *string
		err := db.Pool.QueryRow(context.Background(), `SELECT o.traceparent, n.traceparent FROM outbox o
			JOIN notifications n ON n.id = o.notification_id
			WHERE o.notification_id = $1 AND o.message_type <> $2`, id, schema.StatusEventType).Scan(&task, &notification)
		if err != nil {
			t.Fatalf("notification %d: %v", i, err)
		}
		for what, got := range map[string]*string{"send task": task, "notification": notification} {
			switch {
			case want[i] == "" && got != nil:
				t.Errorf("untraced call %d: %s traceparent %q, want NULL", i, what, *got)
			case want[i] != "" && (got == nil || *got != want[i]):
				t.Errorf("call %d: %s traceparent %v, want %q", i, what, got, want[i])
			}
		}
	}
}
