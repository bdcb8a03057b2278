package retrier

import (
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
)

// Span names of the retrier. Each RetryTask continues the trace of the hand-off that
// published it (delivery.SpanHandOff, through the wait queue's headers); a batch's shared
// work appears as a child in every task's trace.
const (
	// SpanTask is one RetryTask, from its delivery to its settlement (notify.result).
	SpanTask = "retrier.task"
	// SpanLoad is the load of the task's notification (one query for the batch).
	SpanLoad = "retrier.load"
)

func spansOf(tasks []*retryTask) []trace.Span {
	out := make([]trace.Span, len(tasks))
	for i, t := range tasks {
		out[i] = t.span
	}
	return out
}

func setTask(span trace.Span, id string, attempt, tokens int) {
	if span.IsRecording() {
		span.SetAttributes(attribute.String("notify.notification_id", id), attribute.Int("notify.attempt", attempt),
			attribute.Int("notify.tokens", tokens))
	}
}
