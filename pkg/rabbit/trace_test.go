package rabbit

import (
	"context"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"notify/pkg/testenv"
)

// TestTraceAcrossTheBroker: a message published inside a span carries its trace context in
// the traceparent header, and the consumer's span started from Delivery.TraceContext is a
// child of it in the same trace; a message that already names a trace (an outbox row's own)
// keeps it; one published without a span carries none.
func TestTraceAcrossTheBroker(t *testing.T) {
	t.Parallel()
	amqpURL := testenv.AMQPURL(t)
	topo := newTopology(t, amqpURL)
	conn := startConn(t, amqpURL, ConnOptions{Name: topo.Name, Topology: &topo})
	pub := NewPublisher(conn, topo.Exchange(), PublisherOptions{})
	tracer := sdktrace.NewTracerProvider().Tracer("test")

	got := make(chan *Delivery, 3)
	startConsumer(t, conn, topo.SendQueue(), func(_ context.Context, d *Delivery) error {
		got <- d
		return nil
	}, ConsumerOptions{})

	ctx, span := tracer.Start(t.Context(), "publish")
	const foreign = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	msgs := messages("trace", 3, SendKey, []byte("x"))
	msgs[1].Headers = map[string]any{"traceparent": foreign}
	if err := pub.Publish(ctx, msgs[:2]...); err != nil {
		t.Fatal(err)
	}
	span.End()
	if err := pub.Publish(t.Context(), msgs[2]); err != nil {
		t.Fatal(err)
	}

	byID := map[string]*Delivery{}
	for range 3 {
		select {
		case d := <-got:
			byID[d.MessageID] = d
		case <-time.After(15 * time.Second):
			t.Fatalf("got %d of 3 deliveries", len(byID))
		}
	}
	_, child := tracer.Start(byID["trace-0"].TraceContext(t.Context()), "consume")
	defer child.End()
	parent := span.SpanContext()
	if c := child.SpanContext(); c.TraceID() != parent.TraceID() {
		t.Errorf("consumer's trace %s, want the publisher's %s", c.TraceID(), parent.TraceID())
	}
	if p := trace.SpanContextFromContext(byID["trace-0"].TraceContext(t.Context())); p.SpanID() != parent.SpanID() || !p.IsRemote() {
		t.Errorf("remote parent %s (remote %v), want the publish span %s", p.SpanID(), p.IsRemote(), parent.SpanID())
	}
	if h := byID["trace-1"].Headers["traceparent"]; h != foreign {
		t.Errorf("traceparent of a message that had one = %v, want it kept: %s", h, foreign)
	}
	if h, ok := byID["trace-2"].Headers["traceparent"]; ok {
		t.Errorf("a message published without a span carries traceparent %v", h)
	}
	if msgs[0].Headers != nil {
		t.Errorf("Publish modified the caller's message headers: %v", msgs[0].Headers)
	}
}
