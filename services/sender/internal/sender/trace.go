package sender

import (
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
)

// Span names of the sender. A batch of deliveries holds tasks of many traces: each task's
// work is traced under its own SpanTask, a child of the relay's span its SendTask was
// published from; work the batch shares (one query) appears as a child in every trace.
const (
	// SpanTask is one SendTask, from its delivery to its settlement (notify.result).
	SpanTask = "sender.task"
	// SpanLoad is the load of the task's notification (one query for the batch).
	SpanLoad = "sender.load"
	// SpanAudience is a read of a page of the task's audience (up to 500 unsettled
	// targets): the first page of every task of a batch in one query (in the load's round
	// trip, and beside its span, for a task that carries a copy of its request), then each
	// further page of a large audience.
	SpanAudience = "sender.audience"
)

func spansOf(tasks []*task) []trace.Span {
	out := make([]trace.Span, len(tasks))
	for i, t := range tasks {
		out[i] = t.span
	}
	return out
}

func setNotification(span trace.Span, id string) {
	if span.IsRecording() {
		span.SetAttributes(attribute.String("notify.notification_id", id))
	}
}
