package deadletter

import (
	"context"
	"fmt"
	"log/slog"
	"slices"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"

	dlq "notify/pkg/deadletter"
	"notify/pkg/rabbit"
	"notify/pkg/tracing"
)

// Span names of the deadletter service. A dead-letter task continues the trace of the
// hand-off that published it (delivery.SpanHandOff); the Slack alert, which covers many dead
// letters at once, is a trace of its own linked to theirs.
const (
	// SpanTask is one dead-letter message, from its delivery to its ack.
	SpanTask = "deadletter.task"
	// SpanStore is the write of its dead_letters row.
	SpanStore = "deadletter.store"
	// SpanAlert is one alert post (Slack, or the log), linked to the traces of the dead
	// letters it covers (up to the SDK's link limit, 128 by default).
	SpanAlert = "deadletter.alert"
)

// saver is all the handler needs from the database; *Store satisfies it.
type saver interface {
	Save(ctx context.Context, l Letter) (Saved, error)
}

// Handler stores each delivery from the dead-letter queue as a dead_letters row; the
// consumer acks it only after the row is committed.
type Handler struct {
	store saver
	log   *slog.Logger

	stored     *prometheus.CounterVec
	duplicates prometheus.Counter
	saveErrors prometheus.Counter
	failed     prometheus.Counter
}

// NewHandler returns a Handler and registers its metrics.
func NewHandler(store saver, log *slog.Logger, reg prometheus.Registerer) *Handler {
	h := &Handler{
		store: store,
		log:   log,
		stored: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "notify_deadletter_stored_total", Help: "Dead letters stored, by reason.",
		}, []string{"reason"}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "notify_deadletter_duplicates_total", Help: "Dead-letter messages received again after they were stored.",
		}),
		saveErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "notify_deadletter_store_errors_total", Help: "Dead-letter messages requeued because they could not be stored.",
		}),
		failed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "notify_deadletter_notifications_failed_total", Help: "Never-sent notifications marked failed because the broker dead-lettered their send task.",
		}),
	}
	reg.MustRegister(h.stored, h.duplicates, h.saveErrors, h.failed)
	// Every reason the senders give, ours, and the broker's usual ones, at 0 from the start.
	for _, reason := range slices.Concat(dlq.Reasons, []string{ReasonUnknownMessage, ReasonUnspecified, "delivery_limit", "rejected"}) {
		h.stored.WithLabelValues(reason)
	}
	return h
}

// Handle stores one dead-letter message: nil (ack) once its row is committed or was already
// there; a Requeue error when it could not be stored (the consumer requeues it after a
// pause that grows while the database keeps failing).
func (h *Handler) Handle(ctx context.Context, d *rabbit.Delivery) (err error) {
	ctx, span := d.StartSpan(ctx, SpanTask)
	defer func() { tracing.End(span, err) }()
	l := Classify(d)
	log := h.log.With("message_id", l.Key, "reason", l.Reason)
	if l.NotificationID != "" {
		log = log.With("notification_id", l.NotificationID)
	}
	if span.IsRecording() {
		span.SetAttributes(attribute.String("notify.notification_id", l.NotificationID), attribute.String("notify.reason", l.Reason),
			attribute.Int("notify.tokens", len(l.Tokens)))
	}
	sctx, store := tracing.Tracer().Start(ctx, SpanStore)
	saved, err := h.store.Save(sctx, l)
	if store.IsRecording() {
		store.SetAttributes(attribute.Bool("notify.new", saved.New))
	}
	tracing.End(store, err)
	if err != nil {
		h.saveErrors.Inc()
		return rabbit.Requeue(fmt.Errorf("store dead letter (reason %s): %w", l.Reason, err))
	}
	switch {
	case saved.New:
		h.stored.WithLabelValues(l.Reason).Inc()
		log.Debug("dead letter stored", "tokens", len(l.Tokens), "type", l.MessageType)
	default:
		h.duplicates.Inc()
		log.Debug("dead letter already stored")
	}
	if saved.Bare {
		log.Warn("dead letter stored without its details: the database refused them")
	}
	if saved.MarkedFailed {
		h.failed.Inc()
		log.Warn("send task dead-lettered by the broker: the notification was never sent; marked failed so it can be replayed")
	}
	// Should the ack be lost, the redelivered message finds its row and changes nothing.
	return nil
}
