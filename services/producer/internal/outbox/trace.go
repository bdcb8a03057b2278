package outbox

import (
	"context"
	"errors"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"notify/pkg/rabbit"
	"notify/pkg/tracing"
)

// SpanRelay is the span of one traced outbox row's trip to the broker: a child of the call
// that wrote the row (its stored traceparent), from the claim to the commit that marks it
// published. The message carries this span's context, so the consumer's span is its child.
const SpanRelay = "outbox.relay"

// relaySpans are the spans of a round's traced rows, by index in the batch. Rows written
// untraced (tracing off, the default) have no traceparent and cost nothing here.
type relaySpans map[int]trace.Span

// start starts row i's span when the row was written in a trace and sets m's headers to
// carry it.
func (s relaySpans) start(ctx context.Context, i int, o row, m *rabbit.Message) {
	if o.traceparent == nil {
		return
	}
	parent := tracing.WithRemote(ctx, *o.traceparent)
	sctx, span := tracing.Tracer().Start(parent, SpanRelay, trace.WithSpanKind(trace.SpanKindProducer))
	if span.IsRecording() {
		span.SetAttributes(
			attribute.String("messaging.system", "rabbitmq"),
			attribute.String("messaging.rabbitmq.destination.routing_key", o.routingKey),
			attribute.String("messaging.message.id", m.MessageID),
			attribute.Int64("notify.outbox.id", o.id),
			attribute.Float64("notify.outbox.wait_seconds", time.Since(o.createdAt).Seconds()),
		)
	}
	s[i] = span
	m.Headers = rabbit.WithTrace(sctx, m.Headers)
}

// end ends the round's spans: a row that failed, or a round that did, marks its span failed.
func (s relaySpans) end(failed map[int]bool, err error) {
	for i, span := range s {
		e := err
		if e == nil && failed[i] {
			e = errors.New("not published in this round (retried in the next)")
		}
		tracing.End(span, e)
	}
}
