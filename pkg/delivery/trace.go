package delivery

import (
	"context"
	"errors"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"notify/pkg/fcm"
	"notify/pkg/tracing"
)

// Span names of the delivery work, each a child of the span of the task a chunk belongs
// to (Chunk.Span).
const (
	// SpanMulticast is one FCM multicast (up to 500 tokens): notify.app, notify.tokens and
	// the per-token outcome counts notify.delivered, notify.token_gone, notify.transient,
	// notify.permanent.
	SpanMulticast = "fcm.multicast"
	// SpanHandOff is the publish of a chunk's retry task (its transient failures, to the
	// wait level of their next attempt) and dead-letter task: the tasks carry its context,
	// so the retrier's and the deadletter's spans are its children.
	SpanHandOff = "delivery.hand_off"
	// SpanRecord is the store of a chunk's outcomes (one transaction shared by the batch).
	SpanRecord = "delivery.record"
	// SpanPace is the wait for the app's FCM budget (pacing) before a multicast, with
	// notify.app and notify.tokens (how many sends it reserves): a reservation shared by a
	// batch of small notifications is a span under each of their tasks.
	SpanPace = "pace.wait"
	// SpanDeadLetter is the dead-lettering of a message the service cannot handle (not a
	// task, or naming no notification), with notify.reason; the dead-letter task carries it.
	SpanDeadLetter = "delivery.dead_letter"
)

// startPace starts the pace.wait span of one chunk's reservation under ctx's span; with
// tracing off it returns a no-op span and allocates nothing.
func startPace(ctx context.Context, app string, tokens int) trace.Span {
	if !trace.SpanFromContext(ctx).IsRecording() {
		return noop.Span{}
	}
	_, span := tracing.Tracer().Start(ctx, SpanPace, paceAttributes(app, tokens))
	return span
}

// startPaceEach starts a pace.wait span under each of the chunks' spans for a reservation
// they share; nothing when none of them is recording.
func startPaceEach(ctx context.Context, chunks []trace.Span, app string, tokens int) tracing.Spans {
	for _, sp := range chunks {
		if sp != nil && sp.IsRecording() {
			return tracing.StartEach(ctx, SpanPace, chunks, paceAttributes(app, tokens))
		}
	}
	return nil
}

func paceAttributes(app string, tokens int) trace.SpanStartEventOption {
	return trace.WithAttributes(attribute.String("notify.app", app), attribute.Int("notify.tokens", tokens))
}

func endDeadLetter(span trace.Span, reason string, err error) {
	if span.IsRecording() {
		span.SetAttributes(attribute.String("notify.reason", reason))
	}
	tracing.End(span, err)
}

// endMulticast records what a multicast came to on its span and ends it.
func endMulticast(span trace.Span, app string, tokens int, results []fcm.Result, err error) {
	if span.IsRecording() {
		var delivered, gone, transient, permanent int
		for _, r := range results {
			switch {
			case r.Err == nil:
				delivered++
			case errors.Is(r.Err, fcm.ErrTokenGone):
				gone++
			case errors.Is(r.Err, fcm.ErrTransient):
				transient++
			default:
				permanent++
			}
		}
		span.SetAttributes(
			attribute.String("notify.app", app), attribute.Int("notify.tokens", tokens),
			attribute.Int("notify.delivered", delivered), attribute.Int("notify.token_gone", gone),
			attribute.Int("notify.transient", transient), attribute.Int("notify.permanent", permanent),
		)
	}
	tracing.End(span, err)
}

// startHandOff starts chunk i's hand-off span, when the chunk is traced, records it in
// spans (handOff ends them) and returns the context its tasks carry.
func (d *Deliverer) startHandOff(ctx context.Context, ch Chunk, c classified, spans map[int]trace.Span, i int) context.Context {
	if ch.Span == nil || !ch.Span.IsRecording() {
		return ctx
	}
	hctx, span := tracing.Tracer().Start(trace.ContextWithSpan(ctx, ch.Span), SpanHandOff, trace.WithSpanKind(trace.SpanKindProducer))
	span.SetAttributes(attribute.Int("notify.retry_tokens", len(c.retry)), attribute.Int("notify.dead_tokens", len(c.dead)),
		attribute.Int("notify.next_attempt", ch.Attempt+1))
	if len(c.dead) > 0 {
		span.SetAttributes(attribute.String("notify.dead_reason", c.deadReason))
	}
	spans[i] = span
	return hctx
}
