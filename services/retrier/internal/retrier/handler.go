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
	settler   delivery.Settler

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

// Handle processes one RetryTask and settles its delivery: ack once every token is
// settled (or there was nothing left to send: a repeated task), dead-letter what is not a
// RetryTask for a known notification, and requeue on database or broker failures.
func (h *Handler) Handle(ctx context.Context, d *rabbit.Delivery) {
	log := h.log.With("message_id", d.MessageID)
	result, err := h.handle(ctx, d, log)
	h.tasks.WithLabelValues(result).Inc()
	h.settler.Settle(ctx, log, d, result, err)
}

func (h *Handler) handle(ctx context.Context, d *rabbit.Delivery, log *slog.Logger) (string, error) {
	var task busv1.RetryTask
	err := proto.Unmarshal(d.Body, &task)
	if err == nil && (task.GetNotificationId() == "" || len(task.GetTokens()) == 0) {
		err = errors.New("no notification id or no tokens")
	}
	if err != nil {
		return h.deadLetter(ctx, d, deadletter.ReasonUndecodable, "", fmt.Errorf("decode RetryTask: %w", err), log)
	}
	id := task.GetNotificationId()
	log = log.With("notification_id", id)
	n, err := h.store.Load(ctx, id)
	if errors.Is(err, delivery.ErrNotFound) {
		return h.deadLetter(ctx, d, deadletter.ReasonUnknownNotification, id, err, log)
	}
	if err != nil {
		return delivery.ResultRequeued, err
	}
	targets, err := h.store.Unsettled(ctx, n, task.GetTokens())
	if err != nil {
		return delivery.ResultRequeued, err
	}
	if len(targets) == 0 {
		log.Debug("every token of the retry task is already settled")
		return "duplicate", nil
	}
	// Our header wins; the body's copy covers messages whose headers were lost.
	attempt := max(d.Attempt(), int(task.GetAttempt()), 2)
	sum, err := h.deliverer.SendChunk(ctx, n, targets, attempt, false)
	if err != nil {
		return delivery.ResultRequeued, err
	}
	log.Info("retry sent", "attempt", attempt, "tokens", len(targets), "delivered", sum.Delivered,
		"invalid", sum.Invalid, "retrying", sum.Retrying, "failed", sum.Failed, "expired", sum.Expired)
	return "sent", nil
}

func (h *Handler) deadLetter(ctx context.Context, d *rabbit.Delivery, reason, notificationID string, cause error, log *slog.Logger) (string, error) {
	log.Warn("dead-lettering retry task", "reason", reason, "err", cause)
	if err := h.deliverer.DeadLetter(ctx, d, reason, notificationID, cause); err != nil {
		return delivery.ResultRejected, err
	}
	return "dead_lettered", nil
}
