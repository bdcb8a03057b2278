// Package sender turns SendTasks into FCM multicasts. It takes tasks from the queue in
// batches: the small notifications of a batch (one chunk of at most 500 tokens each) are
// loaded, sent and recorded together, a few round trips for the whole batch; a large one
// has its audience resolved page by page and sent as concurrent chunks of at most 500
// tokens. A task is settled only after all its outcomes are committed.
package sender

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/proto"

	"notify/pkg/deadletter"
	"notify/pkg/delivery"
	"notify/pkg/fcm"
	"notify/pkg/rabbit"
	"notify/pkg/tracing"
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
	// step bounds each step of a task (see WithTaskTimeout).
	step delivery.Deadline

	tasks *prometheus.CounterVec

	// republisher and packs are set by WithPacks.
	republisher publisher
	packs       *prometheus.CounterVec
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
	for _, r := range []string{"sent", "duplicate", "expired", "dead_lettered", string(rabbit.Requeued), string(rabbit.Rejected)} {
		h.tasks.WithLabelValues(r)
	}
	return h.WithTaskTimeout(0)
}

// WithTaskTimeout sets the deadline of each step of a task (SEND_TASK_TIMEOUT; 0: none) and
// returns h. A step is a batch's loading and its small notifications (sent and recorded
// together), or one chunk of a large notification (its page read, multicast, hand-off and
// record): a broadcast of any size makes progress chunk by chunk and never meets it. When a
// step's deadline passes, what FCM already answered is still recorded (delivery's grace), the
// tokens whose multicast it cut go to the retry queue like any FCM timeout, and a step that
// had not got that far hands its task back to the queue; the chunks recorded stay, the rest
// is sent when the task comes back.
func (h *Handler) WithTaskTimeout(d time.Duration) *Handler {
	h.step = delivery.Deadline{Timeout: d, Setting: "SEND_TASK_TIMEOUT",
		Then: "the task goes back to the queue: the chunks recorded so far stay, the rest is sent when it comes back"}
	return h
}

// HandleBatch processes a batch of SendTasks (a rabbit.BatchHandler) and returns how the
// consumer settles each delivery:
//   - nil (ack): every token of the audience was settled, or the notification was already
//     final (a redelivery) or expired; also once a body that is not a SendTask or names no
//     notification has been dead-lettered;
//   - Requeue: something failed on the way (database, broker), or the sender is stopping;
//     whatever chunks were committed are skipped when the task comes back;
//   - Reject: the task could not even be dead-lettered explicitly.
//
// The batch's notifications are loaded in one round trip and the first page of each
// audience in another, or in the same one for a task that carries a copy of its
// notification's request (as Publish writes them: SendTask.request). Small audiences (one
// page, up to fcm.MaxMulticast tokens) are sent
// together: their multicasts side by side, their failures handed off in one Publish, their
// outcomes and final statuses written in one transaction (sendSmall). Larger ones take the
// paged, chunked path, one notification at a time (sendLarge), alongside. A task naming
// the same notification as an earlier one of the batch ends as that one does.
func (h *Handler) HandleBatch(ctx context.Context, ds []*rabbit.Delivery) []error {
	// One step for the batch's loading and its small notifications; each chunk of a large one
	// is a step of its own (sendAll).
	stepCtx, cancel := h.step.Start(ctx)
	defer cancel()
	tasks := h.load(stepCtx, ds)
	var small []chunkTask
	var large []*task
	if pending := unfinished(tasks); len(pending) > 0 {
		small, large = h.split(stepCtx, pending)
	}
	var wg sync.WaitGroup
	for _, t := range large {
		t.large = true
		wg.Go(func() { t.finish(h.sendLarge(tracing.With(ctx, t.span), t.n, t.log)) })
	}
	h.sendSmall(stepCtx, small)
	wg.Wait()

	errs := make([]error, len(tasks))
	for i, t := range tasks {
		if !t.large {
			t.err = h.step.Explain(stepCtx, t.err)
			if t.err == nil && t.result == "sent" && h.step.Passed(stepCtx) {
				t.log.Warn("SEND_TASK_TIMEOUT passed while the notification was being sent; the tokens FCM had not answered went to the retry queue",
					"timeout", h.step.Timeout)
			}
		}
		if t.same != nil {
			t.result, t.err = "duplicate", t.same.err
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

// Handle processes one SendTask (a rabbit.Handler): a batch of one.
func (h *Handler) Handle(ctx context.Context, d *rabbit.Delivery) error {
	return h.HandleBatch(ctx, []*rabbit.Delivery{d})[0]
}

// task is one delivery of a batch and what became of it.
type task struct {
	d     *rabbit.Delivery
	span  trace.Span // SpanTask: the task's part of its notification's trace
	log   *slog.Logger
	id    string                 // the notification id, once decoded
	n     *delivery.Notification // once loaded
	same  *task                  // an earlier task of the batch for the same notification
	large bool                   // sent chunk by chunk (sendLarge), each chunk its own step
	guess *delivery.Guess        // the notification as the task's copy of its request says
	page  *delivery.Page         // its first page, read with it from the guess (load)

	done   bool
	result string // what became of the task, for the metrics
	err    error  // how the consumer settles the delivery
}

func (t *task) finish(result string, err error) { t.done, t.result, t.err = true, result, err }

// unfinished returns the tasks still to be handled.
func unfinished(tasks []*task) []*task {
	var out []*task
	for _, t := range tasks {
		if !t.done && t.same == nil {
			out = append(out, t)
		}
	}
	return out
}

// load decodes the batch's tasks and loads their notifications in one round trip. It
// finishes the tasks that need no sending: undecodable or naming no notification
// (dead-lettered), already final (a redelivery), expired; and all of them, requeued, when
// the notifications cannot be read.
func (h *Handler) load(ctx context.Context, ds []*rabbit.Delivery) []*task {
	tasks := make([]*task, len(ds))
	first := map[string]*task{}
	var ids []string
	for i, d := range ds {
		t := &task{d: d, log: h.log.With("message_id", d.MessageID)}
		_, t.span = d.StartSpan(ctx, SpanTask)
		tasks[i] = t
		id, guess, err := decodeSendTask(d.Body)
		if err != nil {
			t.finish("dead_lettered", h.deliverer.DeadLetter(tracing.With(ctx, t.span), d, deadletter.ReasonUndecodable, "", err))
			continue
		}
		t.id, t.guess = id, guess
		t.log = t.log.With("notification_id", t.id)
		setNotification(t.span, id)
		if f, ok := first[t.id]; ok {
			t.same = f
			continue
		}
		first[t.id] = t
		ids = append(ids, t.id)
	}
	if len(ids) == 0 {
		return tasks
	}
	var guesses []delivery.Guess
	var guessed []*task
	for _, t := range unfinished(tasks) {
		if t.guess != nil {
			guesses, guessed = append(guesses, *t.guess), append(guessed, t)
		}
	}
	// The first pages of the guessed audiences come in the load's round trip, which is
	// their audience read too.
	loading := tracing.StartEach(ctx, SpanLoad, spansOf(unfinished(tasks)))
	reading := tracing.StartEach(ctx, SpanAudience, spansOf(guessed))
	found, bad, pages, err := h.store.LoadWithPages(ctx, ids, guesses, fcm.MaxMulticast)
	reading.End(err)
	loading.End(err)
	if err != nil {
		for _, t := range unfinished(tasks) {
			t.finish("", rabbit.Requeue(err))
		}
		return tasks
	}
	var expired []*task
	for _, t := range unfinished(tasks) {
		n, ok := found[t.id]
		switch {
		case !ok:
			err := fmt.Errorf("notification %s: %w", t.id, delivery.ErrNotFound)
			t.finish("dead_lettered", h.deliverer.DeadLetter(tracing.With(ctx, t.span), t.d, deadletter.ReasonUnknownNotification, t.id, err))
		case bad[t.id] != nil:
			t.finish("", rabbit.Requeue(bad[t.id]))
		case n.Final():
			t.log.Debug("notification already final; acknowledging redelivered task", "status", n.Status)
			t.finish("duplicate", nil)
		case time.Now().After(n.ExpiresAt):
			t.n = n
			expired = append(expired, t)
		default:
			t.n = n
			if p, ok := pages[t.id]; ok {
				t.page = &p
			}
		}
	}
	if len(expired) > 0 {
		ids := make([]uuid.UUID, len(expired))
		for i, t := range expired {
			ids[i] = t.n.ID
		}
		err := h.store.ExpireMany(ctx, ids)
		for _, t := range expired {
			if err != nil {
				t.finish("", rabbit.Requeue(err))
				continue
			}
			t.log.Info("notification expired before it was sent")
			t.finish("expired", nil)
		}
	}
	return tasks
}

// split reads the first page of each task's audience, in one round trip, unless load read
// it already: a task whose whole audience fits in it is small (its page is its only
// chunk), the others are large.
func (h *Handler) split(ctx context.Context, tasks []*task) (small []chunkTask, large []*task) {
	var unread []*task
	var ns []*delivery.Notification
	for _, t := range tasks {
		if t.page == nil {
			unread, ns = append(unread, t), append(ns, t.n)
		}
	}
	if len(unread) > 0 {
		reading := tracing.StartEach(ctx, SpanAudience, spansOf(unread))
		pages, err := h.store.FirstPages(ctx, ns, fcm.MaxMulticast)
		reading.End(err)
		if err != nil {
			for _, t := range unread {
				t.finish("", rabbit.Requeue(err))
			}
			return nil, nil
		}
		for i, t := range unread {
			t.page = &pages[i]
		}
	}
	for _, t := range tasks {
		switch p := *t.page; {
		case p.Err != nil:
			t.finish("", rabbit.Requeue(p.Err))
		case p.Next != "":
			large = append(large, t)
		default:
			small = append(small, chunkTask{t, p.Targets})
		}
	}
	return small, large
}

// chunkTask is a small task with its whole unsettled audience.
type chunkTask struct {
	*task
	targets []delivery.Target
}

// sendSmall sends small notifications together, each as its one final chunk (see
// HandleBatch). A failure fails only its own task.
func (h *Handler) sendSmall(ctx context.Context, small []chunkTask) {
	if len(small) == 0 {
		return
	}
	chunks := make([]delivery.Chunk, len(small))
	for i, t := range small {
		chunks[i] = delivery.Chunk{Notification: t.n, Targets: t.targets, Attempt: 1, Final: true, StatusLoaded: true,
			Span: t.span}
	}
	sums, errs := h.deliverer.SendChunks(ctx, chunks)
	for i, t := range small {
		if errs[i] != nil {
			t.finish("", rabbit.Requeue(errs[i]))
			continue
		}
		sum := sums[i]
		if sum.Cancelled {
			t.log.Info("notification cancelled before it was sent")
			t.finish("cancelled", nil)
			continue
		}
		t.log.Debug("notification sent", "status", sum.Status, "delivered", sum.Delivered, "invalid", sum.Invalid,
			"retrying", sum.Retrying, "failed", sum.Failed, "expired", sum.Expired)
		t.finish("sent", nil)
	}
}

// sendLarge sends a notification whose audience takes more than one chunk, page by page
// (sendAll), then sets its final status. It returns what became of the task.
func (h *Handler) sendLarge(ctx context.Context, n *delivery.Notification, log *slog.Logger) (string, error) {
	start := time.Now()
	sum, err := h.sendAll(ctx, n)
	if err != nil {
		return "", rabbit.Requeue(err)
	}
	if sum.Cancelled {
		// Finish keeps a cancelled status; its synchronous commit is what makes the
		// interim chunks' records durable before the task is acknowledged (Chunk.Interim).
		if _, err := h.finish(ctx, n); err != nil {
			return "", rabbit.Requeue(err)
		}
		log.Info("notification cancelled while being sent; the rest is not sent", "delivered", sum.Delivered,
			"invalid", sum.Invalid, "retrying", sum.Retrying, "failed", sum.Failed, "duration", time.Since(start))
		return "cancelled", nil
	}
	status := sum.Status
	if status == "" {
		if status, err = h.finish(ctx, n); err != nil {
			return "", rabbit.Requeue(err)
		}
	}
	log.Info("notification sent", "status", status, "delivered", sum.Delivered, "invalid", sum.Invalid,
		"retrying", sum.Retrying, "failed", sum.Failed, "expired", sum.Expired, "duration", time.Since(start))
	return "sent", nil
}

// finish sets n's status from its counts (Store.Finish) as a step with its own deadline.
func (h *Handler) finish(ctx context.Context, n *delivery.Notification) (string, error) {
	fctx, cancel := h.step.Start(ctx)
	defer cancel()
	status, err := h.store.Finish(fctx, n.ID)
	return status, h.step.Explain(fctx, err)
}

// sendAll walks the audience one page (one chunk) at a time and keeps up to h.chunks
// chunks in flight. Pages are read ahead of the sends, never the whole audience at once.
// Each page read and each chunk is a step with its own deadline (WithTaskTimeout).
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
	var cancelled atomic.Bool // a chunk found the notification cancelled: read no more pages
	after := ""
	for {
		pctx, cancel := h.step.Start(gctx)
		actx, reading := tracing.Tracer().Start(pctx, SpanAudience)
		targets, next, err := h.store.Audience(actx, n, after, fcm.MaxMulticast)
		tracing.End(reading, err)
		err = h.step.Explain(pctx, err)
		cancel()
		if err != nil {
			pageErr = err
			break
		}
		if len(targets) > 0 {
			// The only page of a small audience settles the status with its outcomes.
			final := after == "" && next == ""
			g.Go(func() error {
				cctx, cancel := h.step.Start(gctx)
				defer cancel()
				s, err := h.deliverer.SendChunk(cctx, n, targets, 1, final)
				if err != nil {
					return h.step.Explain(cctx, err)
				}
				if h.step.Passed(cctx) {
					h.log.Warn("SEND_TASK_TIMEOUT passed while a chunk was being sent; the tokens FCM had not answered went to the retry queue",
						"notification_id", n.ID, "timeout", h.step.Timeout)
				}
				if s.Cancelled {
					cancelled.Store(true)
				}
				sums <- s
				return nil
			})
		}
		if next == "" || gctx.Err() != nil || cancelled.Load() {
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
	if pageErr == nil && err == nil && ctx.Err() != nil {
		// The walk stopped early (the delivery's channel closed, or shutdown cancelled it):
		// the audience is not all sent, so the status must not be set from it.
		pageErr = fmt.Errorf("send %s: %w", n.ID, context.Cause(ctx))
	}
	return total, errors.Join(pageErr, err)
}

// decodeSendTask returns the notification a SendTask body names, and what its copy of the
// notification's request says when it carries one, or why it names none (the task is then
// dead-lettered as undecodable, never retried).
func decodeSendTask(body []byte) (string, *delivery.Guess, error) {
	var task busv1.SendTask
	if err := proto.Unmarshal(body, &task); err != nil {
		return "", nil, fmt.Errorf("decode SendTask: %w", err)
	}
	if task.GetNotificationId() == "" {
		return "", nil, errors.New("decode SendTask: no notification id")
	}
	if task.GetRequest() == nil {
		return task.GetNotificationId(), nil, nil
	}
	g := delivery.NewGuess(task.GetNotificationId(), task.GetRequest(), int(task.GetGeneration()))
	return task.GetNotificationId(), &g, nil
}
