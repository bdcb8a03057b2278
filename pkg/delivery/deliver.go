package delivery

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"notify/pkg/deadletter"
	"notify/pkg/fcm"
	"notify/pkg/rabbit"
	"notify/pkg/schema"
	busv1 "notify/proto/gen/notify/bus/v1"
)

// pusher is all delivery needs from FCM; *fcm.Client satisfies it.
type pusher interface {
	SendMulticast(ctx context.Context, m fcm.Message, tokens []string) ([]fcm.Result, error)
}

// publisher is all delivery needs from RabbitMQ; *rabbit.Publisher satisfies it.
type publisher interface {
	Publish(ctx context.Context, msgs ...rabbit.Message) error
}

// Options tune a Deliverer.
type Options struct {
	// MaxAttempts is how many sends a token gets in all (the first one included) before it
	// is dead-lettered.
	MaxAttempts int
	// MaxConcurrentSends bounds the multicasts in flight across every notification this
	// process handles (each is up to 500 HTTP requests on the SDK's 50 goroutines).
	MaxConcurrentSends int
}

// Deliverer sends chunks of tokens through FCM and settles every token: delivered and
// invalid tokens are recorded (invalid ones deactivated), transient failures are handed to
// the retry wait queue for their next attempt, and what cannot be delivered is
// dead-lettered. A chunk's hand-offs are confirmed by the broker before its outcomes are
// committed, so a crash between the two re-sends the chunk rather than losing a token.
type Deliverer struct {
	store *Store
	fcm   pusher
	pub   publisher
	topo  rabbit.Topology
	log   *slog.Logger
	opts  Options
	slots chan struct{}

	sends       *prometheus.CounterVec
	sendLatency prometheus.Histogram
	deactivated *prometheus.CounterVec
	retries     prometheus.Counter
	dead        *prometheus.CounterVec
}

// NewDeliverer returns a Deliverer and registers its metrics.
func NewDeliverer(store *Store, fcmClient pusher, pub publisher, topo rabbit.Topology, log *slog.Logger, reg prometheus.Registerer, opts Options) *Deliverer {
	opts.MaxAttempts = max(opts.MaxAttempts, 1)
	opts.MaxConcurrentSends = max(opts.MaxConcurrentSends, 1)
	d := &Deliverer{
		store: store, fcm: fcmClient, pub: pub, topo: topo, log: log, opts: opts,
		slots: make(chan struct{}, opts.MaxConcurrentSends),
		sends: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "notify_fcm_sends_total", Help: "Tokens sent to FCM, by outcome and FCM error code.",
		}, []string{"outcome", "code"}),
		sendLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "notify_fcm_multicast_seconds", Help: "Duration of one FCM multicast (up to 500 tokens).",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 14),
		}),
		deactivated: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "notify_tokens_deactivated_total", Help: "Tokens deactivated because FCM reported them dead, by FCM error code.",
		}, []string{"code"}),
		retries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "notify_retries_scheduled_total", Help: "Tokens handed to a retry wait queue.",
		}),
		dead: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "notify_dead_letters_published_total", Help: "Dead-letter messages published, by reason.",
		}, []string{"reason"}),
	}
	reg.MustRegister(d.sends, d.sendLatency, d.deactivated, d.retries, d.dead)
	return d
}

// Summary counts what one chunk came to.
type Summary struct {
	Delivered, Invalid, Retrying, Failed, Expired, Skipped int
	// Status is the notification's status after a final chunk (see SendChunk); "" otherwise.
	Status string
}

// Add returns the sum of two summaries.
func (s Summary) Add(o Summary) Summary {
	return Summary{s.Delivered + o.Delivered, s.Invalid + o.Invalid, s.Retrying + o.Retrying, s.Failed + o.Failed,
		s.Expired + o.Expired, s.Skipped + o.Skipped, cmp.Or(o.Status, s.Status)}
}

// SendChunk sends n to up to fcm.MaxMulticast targets as their attempt-th attempt and
// settles every one of them: send, classify each token's result, hand the failures off
// (retry wait queue, dead-letter queue) and record the outcomes. With final set (the
// sender's last chunk of the notification), the notification's final status is set with
// the outcomes and returned in the summary. An error means nothing of the chunk was
// recorded: the caller hands its message back to the broker and the chunk is sent again.
func (d *Deliverer) SendChunk(ctx context.Context, n *Notification, targets []Target, attempt int, final bool) (Summary, error) {
	if len(targets) == 0 {
		return Summary{}, nil
	}
	remaining := time.Until(n.ExpiresAt)
	if remaining <= 0 {
		return d.expire(ctx, n, targets, attempt-1, final)
	}
	skipped, targets := mutedTargets(targets, attempt-1)
	var c classified
	if len(targets) > 0 {
		results, err := d.send(ctx, n, targets, remaining)
		if err != nil {
			return Summary{}, err
		}
		c = d.classify(targets, results, attempt)
		if err := d.handOff(ctx, n.ID, c, attempt); err != nil {
			return Summary{}, err
		}
	}
	if len(skipped) > 0 {
		c.outcomes = append(c.outcomes, skipped...)
		c.sum.Skipped = len(skipped)
		d.sends.WithLabelValues(schema.OutcomeSkippedPreference, "").Add(float64(len(skipped)))
	}
	status, err := d.record(ctx, n.ID, c.outcomes, final)
	if err != nil {
		return Summary{}, err
	}
	c.sum.Status = status
	return c.sum, nil
}

// mutedTargets splits the targets whose user muted the notification's type (recorded
// skipped_preference, never sent) from the ones to send.
func mutedTargets(targets []Target, attempts int) (skipped []Outcome, send []Target) {
	if !slices.ContainsFunc(targets, func(t Target) bool { return t.Muted }) {
		return nil, targets
	}
	for _, t := range targets {
		if t.Muted {
			skipped = append(skipped, Outcome{Target: t, Outcome: schema.OutcomeSkippedPreference, Attempts: attempts})
		} else {
			send = append(send, t)
		}
	}
	return skipped, send
}

// send makes one multicast of n to targets, with the TTL that remains, within the
// process-wide bound on multicasts in flight. It returns one result per target; an error
// only when nothing was sent for a reason retrying the task may fix (not a transient FCM
// failure: those are per-token results).
func (d *Deliverer) send(ctx context.Context, n *Notification, targets []Target, ttl time.Duration) ([]fcm.Result, error) {
	msg := n.Message
	msg.TTL = ttl
	tokens := make([]string, len(targets))
	for i, t := range targets {
		tokens[i] = t.Token
	}
	select {
	case d.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	start := time.Now()
	results, err := d.fcm.SendMulticast(ctx, msg, tokens)
	d.sendLatency.Observe(time.Since(start).Seconds())
	<-d.slots
	if err == nil {
		return results, nil
	}
	if !errors.Is(err, fcm.ErrTransient) {
		return nil, fmt.Errorf("send %d tokens of %s: %w", len(tokens), n.ID, err)
	}
	if len(results) != len(tokens) {
		// The whole call failed transiently with no per-token answers (FCM unreachable):
		// every token failed alike. With answers (ctx ended mid-call), the tokens that were
		// delivered keep their outcome.
		results = make([]fcm.Result, len(tokens))
		for i, tok := range tokens {
			results[i] = fcm.Result{Token: tok, Err: err}
		}
	}
	return results, nil
}

// classified is what a chunk's results come to.
type classified struct {
	outcomes    []Outcome // one per target, in order
	retry, dead []Outcome // the transient failures with attempts left; the rest of the failures
	retryAfter  time.Duration
	deadReason  string
	sum         Summary
}

// classify turns each target's result into its outcome: delivered; invalid (the token is
// gone: deactivated, never retried); retrying (transient, with attempts left); or failed
// (permanent, or transient with no attempts left: dead-lettered).
func (d *Deliverer) classify(targets []Target, results []fcm.Result, attempt int) classified {
	c := classified{outcomes: make([]Outcome, len(targets)), deadReason: deadletter.ReasonRetriesExhausted}
	for i, r := range results {
		o := Outcome{Target: targets[i], Attempts: attempt}
		code := fcm.Code(r.Err)
		switch {
		case r.Err == nil:
			o.Outcome = schema.OutcomeDelivered
			c.sum.Delivered++
		case errors.Is(r.Err, fcm.ErrTokenGone):
			o.Outcome, o.ErrorCode, o.ErrorMessage = schema.OutcomeInvalid, code, r.Err.Error()
			c.sum.Invalid++
			d.deactivated.WithLabelValues(code).Inc()
		case errors.Is(r.Err, fcm.ErrTransient) && attempt < d.opts.MaxAttempts:
			o.Outcome, o.ErrorCode, o.ErrorMessage = schema.OutcomeRetrying, code, r.Err.Error()
			c.sum.Retrying++
			c.retry = append(c.retry, o)
			if se, ok := errors.AsType[*fcm.SendError](r.Err); ok {
				c.retryAfter = max(c.retryAfter, se.RetryAfter)
			}
		default:
			o.Outcome, o.ErrorCode, o.ErrorMessage = schema.OutcomeFailed, code, r.Err.Error()
			if !errors.Is(r.Err, fcm.ErrTransient) {
				c.deadReason = deadletter.ReasonPermanentError
			}
			c.sum.Failed++
			c.dead = append(c.dead, o)
		}
		d.sends.WithLabelValues(o.Outcome, code).Inc()
		c.outcomes[i] = o
	}
	return c
}

// handOff publishes one retry task for the chunk's transient failures (to the wait level of
// their next attempt) and one dead-letter task for the rest, and returns once the broker
// confirmed both: only then may the outcomes be recorded.
func (d *Deliverer) handOff(ctx context.Context, id uuid.UUID, c classified, attempt int) error {
	var msgs []rabbit.Message
	if len(c.retry) > 0 {
		m, err := d.retryMessage(id, c.retry, attempt+1, c.retryAfter)
		if err != nil {
			return err
		}
		msgs = append(msgs, m)
	}
	if len(c.dead) > 0 {
		m, err := deadMessage(id.String(), c.deadReason, c.dead, attempt)
		if err != nil {
			return err
		}
		msgs = append(msgs, m)
	}
	if len(msgs) == 0 {
		return nil
	}
	if err := d.pub.Publish(ctx, msgs...); err != nil {
		return fmt.Errorf("hand off failures of %s: %w", id, err)
	}
	d.retries.Add(float64(len(c.retry)))
	if len(c.dead) > 0 {
		d.dead.WithLabelValues(c.deadReason).Inc()
	}
	return nil
}

func (d *Deliverer) record(ctx context.Context, id uuid.UUID, outcomes []Outcome, final bool) (string, error) {
	if final {
		return d.store.RecordFinal(ctx, id, outcomes)
	}
	return "", d.store.Record(ctx, id, outcomes)
}

// expire records targets whose notification's TTL passed as expired: counted, never
// alerted.
func (d *Deliverer) expire(ctx context.Context, n *Notification, targets []Target, attempts int, final bool) (Summary, error) {
	outcomes := make([]Outcome, len(targets))
	for i, t := range targets {
		outcomes[i] = Outcome{Target: t, Outcome: schema.OutcomeExpired, Attempts: attempts, ErrorCode: schema.CodeExpired,
			ErrorMessage: "the notification's TTL passed before delivery"}
	}
	status, err := d.record(ctx, n.ID, outcomes, final)
	if err != nil {
		return Summary{}, err
	}
	d.sends.WithLabelValues(schema.OutcomeExpired, schema.CodeExpired).Add(float64(len(targets)))
	return Summary{Expired: len(targets), Status: status}, nil
}

// retryMessage builds the retry task for a chunk's transient failures, routed to the wait
// level for its attempt (at least as long as FCM's Retry-After).
func (d *Deliverer) retryMessage(id uuid.UUID, failed []Outcome, attempt int, retryAfter time.Duration) (rabbit.Message, error) {
	task := &busv1.RetryTask{
		NotificationId:   id.String(),
		Tokens:           make([]string, len(failed)),
		Attempt:          int32(attempt),
		LastErrorCode:    failed[0].ErrorCode,
		LastErrorMessage: failed[0].ErrorMessage,
	}
	for i, o := range failed {
		task.Tokens[i] = o.Token
	}
	body, err := proto.Marshal(task)
	if err != nil {
		return rabbit.Message{}, fmt.Errorf("encode retry task: %w", err)
	}
	level := d.topo.WaitLevel(attempt-1, retryAfter)
	if level < 0 {
		return rabbit.Message{}, fmt.Errorf("topology %s has no wait levels", d.topo.Name)
	}
	return rabbit.Message{
		RoutingKey:  d.topo.WaitRoutingKey(level),
		MessageID:   uuid.NewString(),
		Type:        string(task.ProtoReflect().Descriptor().FullName()),
		ContentType: "application/protobuf",
		Headers:     map[string]any{rabbit.AttemptHeader: int32(attempt)},
		Body:        body,
	}, nil
}

// deadMessage builds a dead-letter task for the given tokens.
func deadMessage(notificationID, reason string, failed []Outcome, attempts int) (rabbit.Message, error) {
	task := &busv1.DeadLetterTask{
		NotificationId: notificationID,
		Reason:         reason,
		Attempts:       int32(attempts),
		Tokens:         make([]string, len(failed)),
	}
	if len(failed) > 0 {
		task.ErrorCode, task.ErrorMessage = failed[0].ErrorCode, failed[0].ErrorMessage
	}
	for i, o := range failed {
		task.Tokens[i] = o.Token
	}
	return deadletter.Message(task)
}

// DeadLetter publishes a dead-letter task about a message the service cannot handle (with
// the message itself attached) and returns nil once the broker confirmed it: the handler
// returns that, and the message is acked. When the publish fails it returns a rabbit.Reject
// error instead, so the consumer rejects the message and the queue's own dead-letter route
// takes it to the same place.
func (d *Deliverer) DeadLetter(ctx context.Context, rd *rabbit.Delivery, reason, notificationID string, cause error) error {
	log := d.log.With("message_id", rd.MessageID, "queue", rd.Queue, "reason", reason)
	if notificationID != "" {
		log = log.With("notification_id", notificationID)
	}
	log.Warn("dead-lettering message", "err", cause)
	m, err := deadletter.Message(&busv1.DeadLetterTask{
		NotificationId: notificationID,
		Reason:         reason,
		ErrorMessage:   cause.Error(),
		Attempts:       int32(rd.Attempt()),
		Original:       rd.Body,
		OriginalType:   rd.Type,
	})
	if err != nil {
		return rabbit.Reject(err)
	}
	if err := d.pub.Publish(ctx, m); err != nil {
		return rabbit.Reject(fmt.Errorf("publish dead letter (%s): %w", reason, err))
	}
	d.dead.WithLabelValues(reason).Inc()
	return nil
}
