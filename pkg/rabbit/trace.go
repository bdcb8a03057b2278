package rabbit

import (
	"context"
	"maps"
	"slices"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"notify/pkg/tracing"
)

// traceContext is how a message carries the trace it belongs to: the W3C traceparent and
// tracestate headers, as an HTTP request does, so any OpenTelemetry consumer understands it.
var traceContext = propagation.TraceContext{}

// headerCarrier lets the propagator read and write a message's AMQP headers.
type headerCarrier map[string]any

func (h headerCarrier) Get(key string) string {
	s, _ := h[key].(string)
	return s
}

func (h headerCarrier) Set(key, value string) { h[key] = value }

func (h headerCarrier) Keys() []string { return slices.Collect(maps.Keys(h)) }

// WithTrace returns headers with ctx's trace context added, unless they already carry one
// or ctx has none; headers itself is never modified. Publish adds the context of its own
// ctx this way; a caller publishing messages of several traces at once (the outbox relay,
// the hand-offs of a batch) sets each message's own with WithTrace first.
func WithTrace(ctx context.Context, headers map[string]any) map[string]any {
	if _, ok := headers["traceparent"]; ok {
		return headers
	}
	out := headerCarrier{}
	traceContext.Inject(ctx, out)
	if len(out) == 0 {
		return headers
	}
	maps.Copy(out, headers)
	return out
}

// TraceContext returns ctx carrying, as its remote parent, the trace context the message was
// published with (W3C traceparent in its headers), for a consumer to continue the trace: a
// span started from the returned ctx is a child of the publisher's. Without one, ctx is
// returned as it is.
func (d *Delivery) TraceContext(ctx context.Context) context.Context {
	return traceContext.Extract(ctx, headerCarrier(d.Headers))
}

// StartSpan starts the span of handling the message, named name, as a child of the span
// it was published from (TraceContext): the consumer's part of the publisher's trace. With
// tracing off it records nothing.
func (d *Delivery) StartSpan(ctx context.Context, name string) (context.Context, trace.Span) {
	ctx, span := tracing.Tracer().Start(d.TraceContext(ctx), name, trace.WithSpanKind(trace.SpanKindConsumer))
	if span.IsRecording() {
		span.SetAttributes(
			attribute.String("messaging.system", "rabbitmq"),
			attribute.String("messaging.destination.name", d.Queue),
			attribute.String("messaging.message.id", d.MessageID),
			attribute.Int("notify.attempt", d.Attempt()),
		)
		if !d.Received.IsZero() {
			span.SetAttributes(attribute.Float64("notify.queued_seconds", time.Since(d.Received).Seconds()))
		}
	}
	return ctx, span
}
