// Package retrier sends retry tasks: the tokens of one chunk that failed transiently,
// again, after their wait, a batch of tasks at a time. What fails again moves one wait level up; what runs out of
// attempts is dead-lettered; what outlived its notification's TTL is recorded expired.
package retrier

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"

	"notify/pkg/deadletter"
	"notify/pkg/delivery"
	"notify/pkg/rabbit"
	"notify/pkg/tracing"
	busv1 "notify/proto/gen/notify/bus/v1"
)

// Handler handles deliveries from the retry queue.
type Handler struct {
	store     *delivery.Store
	deliverer *delivery.Deliverer
	log       *slog.Logger
	// step bounds the handling of a batch (see WithTaskTimeout).
	step delivery.Deadline

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
	for _, r := range []string{"sent", "duplicate", "cancelled", "dead_lettered", string(rabbit.Requeued), string(rabbit.Rejected)} {
		h.tasks.WithLabelValues(r)
	}
	return h.WithTaskTimeout(0)
}

// WithTaskTimeout sets the deadline of each batch of retry tasks (RETRY_TASK_TIMEOUT; 0:
// none) and returns h. A batch is one step: its tasks are loaded, sent (each one chunk of at
// most 500 tokens, side by side) and recorded together. When the deadline passes, what FCM
// already answered is still recorded (delivery's grace), the tokens whose multicast it cut go
// one wait level up like any FCM timeout, and a task that had not got that far goes back to
// the queue, its unsettled tokens sent again when it comes back.
func (h *Handler) WithTaskTimeout(d time.Duration) *Handler {
	h.step = delivery.Deadline{Timeout: d, Setting: "RETRY_TASK_TIMEOUT",
		Then: "the task goes back to the queue: the tokens recorded so far stay, the others are sent again when it comes back"}
	return h
}

// HandleBatch processes a batch of RetryTasks (a rabbit.BatchHandler) and returns how the
// consumer settles each delivery: nil (ack) once every token is settled, or there was
// nothing left to send (a repeated task, or one whose tokens Cancel settled), or its
// notification was cancelled (its tokens are recorded cancelled, not sent), or what is
// not a RetryTask for a known notification was dead-lettered; Requeue on database or
// broker failures; Reject when even the dead-lettering failed.
//
// The batch's notifications are loaded in one round trip, the tokens still to send of
// every task read in another, and the tasks sent together through one
// Deliverer.SendChunks call (multicasts side by side, one hand-off Publish, one
// transaction for the outcomes). A failure fails only its own task.
func (h *Handler) HandleBatch(ctx context.Context, ds []*rabbit.Delivery) []error {
	ctx, cancel := h.step.Start(ctx)
	defer cancel()
	tasks := h.load(ctx, ds)
	h.send(ctx, unfinished(tasks))
	errs := make([]error, len(tasks))
	for i, t := range tasks {
		t.err = h.step.Explain(ctx, t.err)
		if t.err == nil && t.result == "sent" && h.step.Passed(ctx) {
			t.log.Warn("RETRY_TASK_TIMEOUT passed while the retry was being sent; the tokens FCM had not answered went one wait level up",
				"timeout", h.step.Timeout)
		}
		result := t.result
		if t.err != nil {
			result = string(rabbit.SettlementOf(t.err))
		}
		h.tasks.WithLabelValues(result).Inc()
		errs[i] = t.err
		tracing.EndTask(t.span, result, t.err)
	}
	return errs
}

// Handle processes one RetryTask (a rabbit.Handler): a batch of one.
func (h *Handler) Handle(ctx context.Context, d *rabbit.Delivery) error {
	return h.HandleBatch(ctx, []*rabbit.Delivery{d})[0]
}

// retryTask is one delivery of a batch and what became of it.
type retryTask struct {
	d       *rabbit.Delivery
	span    trace.Span // SpanTask: the task's part of its notification's trace
	log     *slog.Logger
	body    *busv1.RetryTask
	n       *delivery.Notification // once loaded
	attempt int

	done   bool
	result string // what became of the task, for the metrics
	err    error  // how the consumer settles the delivery
}

func (t *retryTask) finish(result string, err error) { t.done, t.result, t.err = true, result, err }

func unfinished(tasks []*retryTask) []*retryTask {
	var out []*retryTask
	for _, t := range tasks {
		if !t.done {
			out = append(out, t)
		}
	}
	return out
}

// load decodes the batch's tasks and loads their notifications in one round trip,
// dead-lettering what is not a RetryTask or names no notification, and requeueing every
// task when the notifications cannot be read.
func (h *Handler) load(ctx context.Context, ds []*rabbit.Delivery) []*retryTask {
	tasks := make([]*retryTask, len(ds))
	var ids []string
	for i, d := range ds {
		body, err := decodeRetryTask(d.Body)
		t := &retryTask{d: d, log: h.log.With("message_id", d.MessageID), body: body}
		_, t.span = d.StartSpan(ctx, SpanTask)
		tasks[i] = t
		if err != nil {
			t.finish("dead_lettered", h.deliverer.DeadLetter(tracing.With(ctx, t.span), d, deadletter.ReasonUndecodable, "", err))
			continue
		}
		t.log = t.log.With("notification_id", t.body.GetNotificationId())
		// Our header wins; the body's copy covers messages whose headers were lost.
		t.attempt = max(d.Attempt(), int(t.body.GetAttempt()), 2)
		setTask(t.span, t.body.GetNotificationId(), t.attempt, len(t.body.GetTokens()))
		ids = append(ids, t.body.GetNotificationId())
	}
	if len(ids) == 0 {
		return tasks
	}
	loading := tracing.StartEach(ctx, SpanLoad, spansOf(unfinished(tasks)))
	found, bad, err := h.store.LoadMany(ctx, ids)
	loading.End(err)
	for _, t := range unfinished(tasks) {
		id := t.body.GetNotificationId()
		switch n, ok := found[id]; {
		case err != nil:
			t.finish("", rabbit.Requeue(err))
		case !ok:
			t.finish("dead_lettered", h.deliverer.DeadLetter(tracing.With(ctx, t.span), t.d, deadletter.ReasonUnknownNotification, id,
				fmt.Errorf("notification %s: %w", id, delivery.ErrNotFound)))
		case bad[id] != nil:
			t.finish("", rabbit.Requeue(bad[id]))
		default:
			t.n = n
		}
	}
	return tasks
}

// send reads which tokens of each task are still to send (one round trip) and sends them
// all together.
func (h *Handler) send(ctx context.Context, tasks []*retryTask) {
	if len(tasks) == 0 {
		return
	}
	ns, tokens := make([]*delivery.Notification, len(tasks)), make([][]string, len(tasks))
	for i, t := range tasks {
		ns[i], tokens[i] = t.n, t.body.GetTokens()
	}
	targets, err := h.store.UnsettledMany(ctx, ns, tokens)
	if err != nil {
		for _, t := range tasks {
			t.finish("", rabbit.Requeue(err))
		}
		return
	}
	var sending []*retryTask
	var chunks []delivery.Chunk
	for i, t := range tasks {
		if len(targets[i]) == 0 {
			t.log.Debug("every token of the retry task is already settled")
			t.finish("duplicate", nil)
			continue
		}
		sending = append(sending, t)
		chunks = append(chunks, delivery.Chunk{Notification: t.n, Targets: targets[i], Attempt: t.attempt, Span: t.span})
	}
	sums, errs := h.deliverer.SendChunks(ctx, chunks)
	for i, t := range sending {
		if errs[i] != nil {
			t.finish("", rabbit.Requeue(errs[i]))
			continue
		}
		sum := sums[i]
		if sum.Cancelled {
			t.log.Info("notification cancelled; retry not sent, its tokens recorded cancelled", "tokens", sum.CancelledTokens)
			t.finish("cancelled", nil)
			continue
		}
		t.log.Info("retry sent", "attempt", t.attempt, "tokens", len(chunks[i].Targets), "delivered", sum.Delivered,
			"invalid", sum.Invalid, "retrying", sum.Retrying, "failed", sum.Failed, "expired", sum.Expired)
		t.finish("sent", nil)
	}
}

// decodeRetryTask returns the RetryTask a body holds, or why it holds none that can be
// sent: not a RetryTask, no notification or no tokens (the task is then dead-lettered as
// undecodable, never retried). The task returned is never nil.
func decodeRetryTask(body []byte) (*busv1.RetryTask, error) {
	task := &busv1.RetryTask{}
	if err := proto.Unmarshal(body, task); err != nil {
		return task, fmt.Errorf("decode RetryTask: %w", err)
	}
	if task.GetNotificationId() == "" || len(task.GetTokens()) == 0 {
		return task, errors.New("decode RetryTask: no notification id or no tokens")
	}
	return task, nil
}
