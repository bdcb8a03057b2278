package rabbit

import (
	"context"
	"maps"
	"slices"

	"go.opentelemetry.io/otel/propagation"
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

// withTrace returns m's headers with ctx's trace context added, unless m already carries one
// (the outbox relay publishes many rows at once, each with the trace of its own Publish) or
// ctx has none. m.Headers itself is never modified.
func withTrace(ctx context.Context, headers map[string]any) map[string]any {
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
