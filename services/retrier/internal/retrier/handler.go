// Package retrier sends retry tasks: the tokens of one chunk that failed transiently,
// again, after their wait. What fails again moves one wait level up; what runs out of
// attempts is dead-lettered; what outlived its notification's TTL is recorded expired.
package retrier

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"notify/pkg/deadletter"
	"notify/pkg/delivery"
	"notify/pkg/rabbit"
	busv1 "notify/proto/gen/notify/bus/v1"
)

// Handler handles deliveries from the retry queue.
type Handler struct {
	store     *delivery.Store
	deliverer *delivery.Deliverer
	log       *slog.Logger

	tasks *prometheus.CounterVec
}

// NewHandler returns a retry-queue handler and registers its metrics.
func NewHandler(store *delivery.Store, d *delivery.Deliverer, log *slog.Logger, reg prometheus.Registerer) *Handler {
	h := &Handler{
		store: store, deliverer: d, log: log,
		tasks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "notify_retry_tasks_total", Help: "Retry tasks handled, by result.",
		}, []string{"result"}),
	}
	reg.MustRegister(h.tasks)
	return h
}

// Handle processes one RetryTask; the consumer settles the delivery from its error: nil
// (ack) once every token is settled, or there was nothing left to send (a repeated task), or
// what is not a RetryTask for a known notification was dead-lettered; Requeue on database or
// broker failures; Reject when even the dead-lettering failed.
func (h *Handler) Handle(ctx context.Context, d *rabbit.Delivery) error {
	result, err := h.handle(ctx, d, h.log.With("message_id", d.MessageID))
	if err != nil {
		result = string(rabbit.SettlementOf(err))
	}
	h.tasks.WithLabelValues(result).Inc()
	return err
}

// handle returns what became of the task, for the metrics.
func (h *Handler) handle(ctx context.Context, d *rabbit.Delivery, log *slog.Logger) (string, error) {
	var task busv1.RetryTask
	err := proto.Unmarshal(d.Body, &task)
	if err == nil && (task.GetNotificationId() == "" || len(task.GetTokens()) == 0) {
		err = errors.New("no notification id or no tokens")
	}
	if err != nil {
		return "dead_lettered", h.deliverer.DeadLetter(ctx, d, deadletter.ReasonUndecodable, "", fmt.Errorf("decode RetryTask: %w", err))
	}
	id := task.GetNotificationId()
	log = log.With("notification_id", id)
	n, err := h.store.Load(ctx, id)
	if errors.Is(err, delivery.ErrNotFound) {
		return "dead_lettered", h.deliverer.DeadLetter(ctx, d, deadletter.ReasonUnknownNotification, id, err)
	}
	if err != nil {
		return "", rabbit.Requeue(err)
	}
	targets, err := h.store.Unsettled(ctx, n, task.GetTokens())
	if err != nil {
		return "", rabbit.Requeue(err)
	}
	if len(targets) == 0 {
		log.Debug("every token of the retry task is already settled")
		return "duplicate", nil
	}
	// Our header wins; the body's copy covers messages whose headers were lost.
	attempt := max(d.Attempt(), int(task.GetAttempt()), 2)
	sum, err := h.deliverer.SendChunk(ctx, n, targets, attempt, false)
	if err != nil {
		return "", rabbit.Requeue(err)
	}
	log.Info("retry sent", "attempt", attempt, "tokens", len(targets), "delivered", sum.Delivered,
		"invalid", sum.Invalid, "retrying", sum.Retrying, "failed", sum.Failed, "expired", sum.Expired)
	return "sent", nil
}
