package outbox

import (
	"context"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace/noop"

	"notify/pkg/pgtest"
	"notify/pkg/tracing"
)

// TestRelayCarriesEachRowsTrace: a round publishes rows of several traces; each traced
// row's message carries the context of its own outbox.relay span, a child of the call that
// wrote the row; an untraced row gets no header and no span; a row whose publish failed
// has its span marked failed, and a new one when the next round publishes it.
func TestRelayCarriesEachRowsTrace(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	otel.SetTracerProvider(sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp)))
	t.Cleanup(func() { otel.SetTracerProvider(noop.NewTracerProvider()) })

	db := pgtest.New(t)
	const (
		a = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
		b = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	)
	// Row 3 (b) is the one flakyPublisher fails in the first round.
	for _, tp := range []*string{new(a), nil, new(b)} {
		if _, err := db.Pool.Exec(context.Background(), `INSERT INTO outbox (routing_key, message_type, body, traceparent)
			VALUES ('send', 'notify.bus.v1.SendTask', 'x', $1)`, tp); err != nil {
			t.Fatal(err)
		}
	}
	pub := &flakyPublisher{}
	r := NewRelay(db.Pool, pub, discard, prometheus.NewRegistry(), Options{BatchSize: 100})
	for range 2 {
		if _, err := r.RelayOnce(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if len(pub.sent) != 3 {
		t.Fatalf("published %d messages, want 3", len(pub.sent))
	}

	spans := map[string]tracetest.SpanStub{} // by span id
	for _, s := range exp.GetSpans() {
		if s.Name != SpanRelay {
			t.Errorf("unexpected span %q", s.Name)
		}
		spans[s.SpanContext.SpanID().String()] = s
	}
	if len(spans) != 3 {
		t.Fatalf("%d relay spans, want 3 (a; b failed, then b)", len(spans))
	}
	for i, want := range []string{a, "", b} {
		m := pub.sent[i]
		got, _ := m.Headers["traceparent"].(string)
		if want == "" {
			if m.Headers != nil {
				t.Errorf("untraced row published with headers %v", m.Headers)
			}
			continue
		}
		sc := tracing.Remote(got)
		parent := tracing.Remote(want)
		s, ok := spans[sc.SpanID().String()]
		switch {
		case !ok:
			t.Errorf("row %d carries %q, not a relay span's context", i, got)
		case s.SpanContext.TraceID() != parent.TraceID() || s.Parent.SpanID() != parent.SpanID():
			t.Errorf("row %d's relay span is in %s under %s, want a child of %s", i, s.SpanContext.TraceID(), s.Parent.SpanID(), want)
		case s.Status.Code != codes.Unset:
			t.Errorf("row %d's published relay span has status %v", i, s.Status)
		}
	}
	failed := 0
	for _, s := range spans {
		if s.Status.Code == codes.Error {
			failed++
			if s.Parent.SpanID() != tracing.Remote(b).SpanID() {
				t.Errorf("the failed span is under %s, want b's row", s.Parent.SpanID())
			}
		}
	}
	if failed != 1 {
		t.Errorf("%d failed relay spans, want 1 (b's first round)", failed)
	}
}
