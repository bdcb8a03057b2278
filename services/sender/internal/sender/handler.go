// Package sender turns SendTasks into FCM multicasts: it resolves a notification's audience
// page by page, sends the pages concurrently as chunks of at most 500 tokens, and settles
// the task only after every chunk's outcomes are committed.
package sender

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/proto"

	"notify/pkg/deadletter"
	"notify/pkg/delivery"
	"notify/pkg/fcm"
	"notify/pkg/rabbit"
	busv1 "notify/proto/gen/notify/bus/v1"
)

// errStopping hands a half-sent notification back to the queue when the sender stops; the
// chunks already committed are skipped when the next sender picks it up.
var errStopping = errors.New("sender is stopping")

// Handler handles deliveries from the send queue.
type Handler struct {
	store     *delivery.Store
	deliverer *delivery.Deliverer
	log       *slog.Logger
	// chunks is how many chunks of one notification are in flight at once.
	chunks int

	tasks *prometheus.CounterVec
}

// NewHandler returns a send-queue handler and registers its metrics.
func NewHandler(store *delivery.Store, d *delivery.Deliverer, log *slog.Logger, reg prometheus.Registerer, chunkConcurrency int) *Handler {
	h := &Handler{
		store: store, deliverer: d, log: log, chunks: max(chunkConcurrency, 1),
		tasks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "notify_send_tasks_total", Help: "Send tasks handled, by result.",
		}, []string{"result"}),
	}
	reg.MustRegister(h.tasks)
	return h
}

// Handle processes one SendTask; the consumer settles the delivery from its error:
//   - nil (ack): every token of the audience was settled, or the notification was already
//     final (a redelivery) or expired; also once a body that is not a SendTask or names no
//     notification has been dead-lettered;
//   - Requeue: something failed on the way (database, broker), or the sender is stopping;
//     whatever chunks were committed are skipped when the task comes back;
//   - Reject: the task could not even be dead-lettered explicitly.
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
	var task busv1.SendTask
	if err := proto.Unmarshal(d.Body, &task); err != nil || task.GetNotificationId() == "" {
		if err == nil {
			err = errors.New("no notification id")
		}
		return "dead_lettered", h.deliverer.DeadLetter(ctx, d, deadletter.ReasonUndecodable, "", fmt.Errorf("decode SendTask: %w", err))
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
	if n.Final() {
		log.Debug("notification already final; acknowledging redelivered task", "status", n.Status)
		return "duplicate", nil
	}
	if time.Now().After(n.ExpiresAt) {
		log.Info("notification expired before it was sent")
		if err := h.store.Expire(ctx, n.ID); err != nil {
			return "", rabbit.Requeue(err)
		}
		return "expired", nil
	}

	start := time.Now()
	sum, err := h.sendAll(ctx, n)
	if err != nil {
		return "", rabbit.Requeue(err)
	}
	status := sum.Status
	if status == "" {
		if status, err = h.store.Finish(ctx, n.ID); err != nil {
			return "", rabbit.Requeue(err)
		}
	}
	log.Info("notification sent", "status", status, "delivered", sum.Delivered, "invalid", sum.Invalid,
		"retrying", sum.Retrying, "failed", sum.Failed, "expired", sum.Expired, "duration", time.Since(start))
	return "sent", nil
}

// sendAll walks the audience one page (one chunk) at a time and keeps up to h.chunks
// chunks in flight. Pages are read ahead of the sends, never the whole audience at once.
func (h *Handler) sendAll(ctx context.Context, n *delivery.Notification) (delivery.Summary, error) {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(h.chunks)
	sums := make(chan delivery.Summary, h.chunks)
	var total delivery.Summary
	collected := make(chan struct{})
	go func() {
		for s := range sums {
			total = total.Add(s)
		}
		close(collected)
	}()

	var pageErr error
	after := ""
	for {
		targets, next, err := h.store.Audience(gctx, n, after, fcm.MaxMulticast)
		if err != nil {
			pageErr = err
			break
		}
		if len(targets) > 0 {
			// The only page of a small audience settles the status with its outcomes.
			final := after == "" && next == ""
			g.Go(func() error {
				s, err := h.deliverer.SendChunk(gctx, n, targets, 1, final)
				if err != nil {
					return err
				}
				sums <- s
				return nil
			})
		}
		if next == "" || gctx.Err() != nil {
			break
		}
		select {
		case <-rabbit.Stopping(ctx):
			// No new chunks; the ones in flight finish and the task goes back to the queue
			// for the next sender.
			pageErr = errStopping
		default:
		}
		if pageErr != nil {
			break
		}
		after = next
	}
	err := g.Wait()
	close(sums)
	<-collected
	return total, errors.Join(pageErr, err)
}
