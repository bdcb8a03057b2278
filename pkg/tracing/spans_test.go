package tracing_test

import (
	"context"
	"errors"
	"testing"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"notify/pkg/tracing"
)

// recorder installs an SDK provider that keeps the spans in memory until the test ends.
func recorder(t *testing.T) *tracetest.InMemoryExporter {
	exp := tracetest.NewInMemoryExporter()
	otel.SetTracerProvider(sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp)))
	// Not the previous provider: OpenTelemetry's default one delegates, for good, to the
	// first provider ever set, so only an explicit no-op one turns tracing off again.
	t.Cleanup(func() { otel.SetTracerProvider(noop.NewTracerProvider()) })
	return exp
}

// TestTraceparentRoundTrip: what Traceparent stores, WithRemote continues: a span started
// from it is a child in the same trace. No span, "" and garbage give nothing.
func TestTraceparentRoundTrip(t *testing.T) {
	if got := tracing.Traceparent(context.Background()); got != "" {
		t.Errorf("Traceparent without a span = %q, want \"\"", got)
	}
	for _, bad := range []string{"", "00-garbage", "00-00000000000000000000000000000000-0000000000000000-01"} {
		if ctx := tracing.WithRemote(context.Background(), bad); trace.SpanContextFromContext(ctx).IsValid() {
			t.Errorf("WithRemote(%q) gave a span context", bad)
		}
	}
	exp := recorder(t)
	ctx, parent := tracing.Tracer().Start(context.Background(), "publish")
	tp := tracing.Traceparent(ctx)
	parent.End()
	_, child := tracing.Tracer().Start(tracing.WithRemote(context.Background(), tp), "relay")
	child.End()
	spans := exp.GetSpans()
	if len(spans) != 2 {
		t.Fatalf("%d spans, want 2", len(spans))
	}
	if spans[1].Parent.SpanID() != spans[0].SpanContext.SpanID() || spans[1].SpanContext.TraceID() != spans[0].SpanContext.TraceID() {
		t.Errorf("relay's parent %v, want publish %v in the same trace", spans[1].Parent, spans[0].SpanContext)
	}
}

// TestStartEach: a batch's shared work is a child span of each recording item's span, with
// that item's error; items without a span, or with tracing off, get none.
func TestStartEach(t *testing.T) {
	if s := tracing.StartEach(context.Background(), "off", []trace.Span{trace.SpanFromContext(context.Background()), nil}); s != nil {
		t.Errorf("StartEach with no recording parent = %v, want nil", s)
	}
	exp := recorder(t)
	_, a := tracing.Tracer().Start(context.Background(), "a")
	_, b := tracing.Tracer().Start(context.Background(), "b")
	each := tracing.StartEach(context.Background(), "load", []trace.Span{a, nil, b})
	each.EndEach([]error{nil, nil, errors.New("b failed")})
	a.End()
	b.End()
	byParent := map[trace.SpanID]sdktrace.ReadOnlySpan{}
	for _, s := range exp.GetSpans().Snapshots() {
		if s.Name() == "load" {
			byParent[s.Parent().SpanID()] = s
		}
	}
	if len(byParent) != 2 {
		t.Fatalf("%d load spans, want 2 (one per recording parent)", len(byParent))
	}
	if s := byParent[a.SpanContext().SpanID()]; s == nil || s.Status().Code != codes.Unset {
		t.Errorf("a's load span %v, want one with no error", s)
	}
	if s := byParent[b.SpanContext().SpanID()]; s == nil || s.Status().Code != codes.Error {
		t.Errorf("b's load span %v, want one with b's error", s)
	}
}

// BenchmarkOff is what tracing costs a task when it is off (the default): the spans one
// sender task starts (task, load, multicast, record) and the traceparent Publish stores.
//
//	cd pkg && go test -run x -bench Off ./tracing/
func BenchmarkOff(b *testing.B) {
	otel.SetTracerProvider(noop.NewTracerProvider())
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		tctx, task := tracing.Tracer().Start(ctx, "task")
		each := tracing.StartEach(ctx, "load", []trace.Span{task})
		each.End(nil)
		_, m := tracing.Tracer().Start(tracing.With(ctx, task), "multicast")
		tracing.End(m, nil)
		if tracing.Traceparent(tctx) != "" {
			b.Fatal("a traceparent with tracing off")
		}
		tracing.End(task, nil)
	}
}
