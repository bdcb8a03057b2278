package tracing

import (
	"context"
	"sync/atomic"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// ScopeName is the instrumentation scope of notify's own spans.
const ScopeName = "notify"

// cachedTracer is the tracer of the provider it came from: looking a tracer up takes the
// provider's lock, so it is done once per provider, not once per span.
type cachedTracer struct {
	provider trace.TracerProvider
	tracer   trace.Tracer
}

var current atomic.Pointer[cachedTracer]

// Tracer returns notify's tracer from the global provider: with tracing off, OpenTelemetry's
// no-op one, whose spans record nothing.
func Tracer() trace.Tracer {
	tp := otel.GetTracerProvider()
	if c := current.Load(); c != nil && c.provider == tp {
		return c.tracer
	}
	c := &cachedTracer{provider: tp, tracer: tp.Tracer(ScopeName)}
	current.Store(c)
	return c.tracer
}

// On reports whether the environment turns tracing on (OTEL_TRACES_EXPORTER=otlp), for
// instrumentation that should not even be installed otherwise (the gRPC stats handler).
func On(getenv func(string) string) bool { return getenv("OTEL_TRACES_EXPORTER") == "otlp" }

// w3c is how a trace context is stored (outbox and notification rows) and carried (AMQP
// headers): the W3C traceparent, the same whichever propagator the process installed.
var w3c = propagation.TraceContext{}

// Traceparent returns the W3C traceparent of ctx's span, or "" when ctx has none (always
// so with tracing off: no span is ever started then).
func Traceparent(ctx context.Context) string {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return ""
	}
	c := propagation.MapCarrier{}
	w3c.Inject(ctx, c)
	return c["traceparent"]
}

// Remote returns the span context a traceparent names, invalid for "" or a malformed one.
func Remote(traceparent string) trace.SpanContext {
	if traceparent == "" {
		return trace.SpanContext{}
	}
	ctx := w3c.Extract(context.Background(), propagation.MapCarrier{"traceparent": traceparent})
	return trace.SpanContextFromContext(ctx)
}

// WithRemote returns ctx with the span traceparent names as its (remote) parent; ctx as it
// is when traceparent is "" or malformed.
func WithRemote(ctx context.Context, traceparent string) context.Context {
	sc := Remote(traceparent)
	if !sc.IsValid() {
		return ctx
	}
	return trace.ContextWithRemoteSpanContext(ctx, sc)
}

// With returns ctx with span as the parent of the spans started from it, for work done on
// behalf of one item of a batch under a context shared by the batch (its deadline, its
// cancellation). With no span, or one that is not part of a trace, ctx is returned as it
// is, so tracing off costs nothing.
func With(ctx context.Context, span trace.Span) context.Context {
	if span == nil || !span.SpanContext().IsValid() {
		return ctx
	}
	return trace.ContextWithSpan(ctx, span)
}

// Spans are one span per item of a batch for work the batch does together (one query,
// one transaction, one publish): each item's trace shows the shared work as its own child.
type Spans []trace.Span

// StartEach starts a span named name under each of parents that is recording (nil
// entries and non-recording parents get none: tracing off allocates nothing).
func StartEach(ctx context.Context, name string, parents []trace.Span, opts ...trace.SpanStartOption) Spans {
	var out Spans
	for i, p := range parents {
		if p == nil || !p.IsRecording() {
			continue
		}
		if out == nil {
			out = make(Spans, len(parents))
		}
		_, out[i] = Tracer().Start(trace.ContextWithSpan(ctx, p), name, opts...)
	}
	return out
}

// End ends every span, recording err, when not nil, on all of them.
func (s Spans) End(err error) {
	for _, sp := range s {
		if sp != nil {
			End(sp, err)
		}
	}
}

// EndEach ends span i with errs[i] recorded when it is not nil.
func (s Spans) EndEach(errs []error) {
	for i, sp := range s {
		if sp != nil {
			var err error
			if i < len(errs) {
				err = errs[i]
			}
			End(sp, err)
		}
	}
}

// EndTask ends the span of a consumed task (a SendTask, a RetryTask) with what became of
// it (notify.result: delivered, retrying, requeued…) and its error, if any.
func EndTask(span trace.Span, result string, err error) {
	if span.IsRecording() {
		span.SetAttributes(attribute.String("notify.result", result))
	}
	End(span, err)
}

// End ends span, marking it failed with err when err is not nil.
func End(span trace.Span, err error) {
	if err != nil && span.IsRecording() {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}
