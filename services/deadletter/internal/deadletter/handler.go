package deadletter

import (
	"cmp"
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"notify/pkg/rabbit"
)

// saver is all the handler needs from the database; *Store satisfies it.
type saver interface {
	Save(ctx context.Context, l Letter) (Saved, error)
}

// HandlerOptions tune a Handler. The zero value is usable.
type HandlerOptions struct {
	// MinPause and MaxPause bound how long a handler waits before requeueing a message it
	// could not store: the pause doubles with every consecutive failure, so a database
	// outage is retried slowly instead of spinning. Defaults 500ms and 15s.
	MinPause, MaxPause time.Duration
}

// Handler stores each delivery from the dead-letter queue as a dead_letters row and acks it
// only after the row is committed.
type Handler struct {
	store    saver
	log      *slog.Logger
	opts     HandlerOptions
	failures atomic.Int32 // consecutive failed saves, across workers

	stored     *prometheus.CounterVec
	duplicates prometheus.Counter
	saveErrors prometheus.Counter
	failed     prometheus.Counter
}

// NewHandler returns a Handler and registers its metrics.
func NewHandler(store saver, log *slog.Logger, reg prometheus.Registerer, opts HandlerOptions) *Handler {
	opts.MinPause = cmp.Or(opts.MinPause, 500*time.Millisecond)
	opts.MaxPause = max(cmp.Or(opts.MaxPause, 15*time.Second), opts.MinPause)
	h := &Handler{
		store: store,
		log:   log,
		opts:  opts,
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
	return h
}

// Handle stores one dead-letter message and settles it: acked once its row is committed
// (or was already there), requeued after a pause when it could not be stored.
func (h *Handler) Handle(ctx context.Context, d *rabbit.Delivery) {
	l := Classify(d)
	log := h.log.With("message_id", l.Key, "reason", l.Reason)
	if l.NotificationID != "" {
		log = log.With("notification_id", l.NotificationID)
	}
	saved, err := h.store.Save(ctx, l)
	if err != nil {
		h.saveErrors.Inc()
		if ctx.Err() != nil {
			log.Info("stopping before the dead letter was stored; requeueing it", "err", err)
		} else {
			pause := h.pause()
			log.Error("could not store dead letter; requeueing it", "err", err, "requeue_in", pause)
			sleep(ctx, pause)
		}
		if err := d.Nack(true); err != nil {
			log.Warn("could not requeue dead letter; the broker will redeliver it", "err", err)
		}
		return
	}
	h.failures.Store(0)
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
	if err := d.Ack(); err != nil {
		// The row is committed: the redelivered message will find it and change nothing.
		log.Warn("could not ack stored dead letter; it will be redelivered", "err", err)
	}
}

// pause returns how long to wait before requeueing after a failed save.
func (h *Handler) pause() time.Duration {
	n := min(h.failures.Add(1)-1, 16)
	return min(h.opts.MinPause<<n, h.opts.MaxPause)
}

// sleep waits for d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
