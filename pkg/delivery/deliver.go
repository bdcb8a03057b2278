package delivery

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/semaphore"
	"google.golang.org/protobuf/proto"

	"notify/pkg/deadletter"
	"notify/pkg/fcm"
	"notify/pkg/rabbit"
	"notify/pkg/schema"
	"notify/pkg/tracing"
	"notify/pkg/workers"
	busv1 "notify/proto/gen/notify/bus/v1"
)

// pusher is all delivery needs from FCM; *fcm.Client satisfies it.
type pusher = Pusher

// Pusher sends multicasts for one app; *fcm.Client satisfies it.
type Pusher interface {
	SendMulticast(ctx context.Context, m fcm.Message, tokens []string) ([]fcm.Result, error)
}

// Pacer keeps sends within each app's quota, shared by every process; *pace.Budget
// satisfies it.
type Pacer interface {
	// Grant is the most sends one Take of app covers.
	Grant(app string) int
	// Take reserves n sends of app and returns when they may go out.
	Take(ctx context.Context, app string, n int) error
	// TakeLeased is Take for a small batch: it may reserve a whole grant and keep the rest
	// for the process's next small batches.
	TakeLeased(ctx context.Context, app string, n int) error
	// Throttle tells every process that FCM answered 429 for app.
	Throttle(ctx context.Context, app string, retryAfter time.Duration) error
}

// CodeUnknownApp is the error code of tokens of a notification whose app this process has
// no FCM client for (the producer's APPS and the FCM_APPS_FILE disagree): dead-lettered,
// replayable once the app is configured.
const CodeUnknownApp = "UNKNOWN_APP"

// publisher is all delivery needs from RabbitMQ; *rabbit.Publisher satisfies it.
type publisher interface {
	Publish(ctx context.Context, msgs ...rabbit.Message) error
}

// Options tune a Deliverer.
type Options struct {
	// MaxAttempts is how many sends a token gets in all (the first one included) before it
	// is dead-lettered.
	MaxAttempts int
	// MaxConcurrentSends bounds the FCM requests in flight across every notification this
	// process handles to as many as this many full multicasts make (the SDK sends a
	// multicast's up to 500 tokens 50 at a time): a multicast of n tokens takes min(n, 50)
	// of the MaxConcurrentSends × 50 slots, so small notifications are sent side by side
	// and large ones one per 50 slots.
	MaxConcurrentSends int
	// Apps returns the pusher of each app; nil sends every app through the Deliverer's one
	// pusher.
	Apps func(app string) (Pusher, bool)
	// Pacer, when set, paces every send to its app's shared budget and is told of 429s.
	Pacer Pacer
	// AppNames are the configured apps, for metrics that start at 0 (default: "default").
	AppNames []string
}

// requestsPerMulticast is how many requests the SDK has in flight for one multicast.
const requestsPerMulticast = 50

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
	// slots bounds the FCM requests in flight: MaxConcurrentSends × requestsPerMulticast.
	slots *semaphore.Weighted
	// workers run SendChunks' sends, on goroutines whose stacks have grown already.
	workers *workers.Pool

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
		slots:   semaphore.NewWeighted(int64(opts.MaxConcurrentSends * requestsPerMulticast)),
		workers: workers.New(workers.Idle),
		sends: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "notify_fcm_sends_total", Help: "Tokens sent to FCM, by app, outcome and FCM error code.",
		}, []string{"app", "outcome", "code"}),
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
	// Every outcome, with its most common code, and every deactivation code and dead-letter
	// reason at 0 from the start, so that rates and alerts see the first event.
	apps := opts.AppNames
	if len(apps) == 0 {
		apps = []string{schema.DefaultApp}
	}
	for outcome, code := range map[string]string{
		schema.OutcomeDelivered: "OK", schema.OutcomeInvalid: "UNREGISTERED", schema.OutcomeRetrying: "UNAVAILABLE",
		schema.OutcomeFailed: "UNAVAILABLE", schema.OutcomeExpired: schema.CodeExpired,
	} {
		for _, app := range apps {
			d.sends.WithLabelValues(app, outcome, code)
		}
	}
	for _, code := range []string{"UNREGISTERED", "SENDER_ID_MISMATCH", "INVALID_ARGUMENT"} {
		d.deactivated.WithLabelValues(code)
	}
	for _, reason := range deadletter.Reasons {
		d.dead.WithLabelValues(reason)
	}
	return d
}

// Summary counts what one chunk came to.
type Summary struct {
	Delivered, Invalid, Retrying, Failed, Expired, Skipped int
	// Status is the notification's status after a final chunk (see SendChunk); "" otherwise.
	Status string
	// Cancelled: the notification was cancelled before the chunk was sent, and nothing of
	// it was sent. A retry's targets were recorded cancelled (counted in CancelledTokens);
	// the sender's were not recorded.
	Cancelled bool
	// CancelledTokens counts the targets of a retry recorded cancelled.
	CancelledTokens int
}

// Add returns the sum of two summaries.
func (s Summary) Add(o Summary) Summary {
	return Summary{s.Delivered + o.Delivered, s.Invalid + o.Invalid, s.Retrying + o.Retrying, s.Failed + o.Failed,
		s.Expired + o.Expired, s.Skipped + o.Skipped, cmp.Or(o.Status, s.Status), s.Cancelled || o.Cancelled,
		s.CancelledTokens + o.CancelledTokens}
}

// Chunk is up to fcm.MaxMulticast targets of one notification to send as their Attempt-th
// attempt. Final marks the sender's last chunk of the notification: its final status is
// set with the outcomes (and returned in the summary); a Final chunk may have no targets.
type Chunk struct {
	Notification *Notification
	Targets      []Target
	Attempt      int
	Final        bool
	// Interim marks a sender's chunk of a notification it is still walking: more chunks
	// follow, and the sender sets the final status (Store.Finish, a synchronous commit)
	// before it acknowledges the task. Its record may commit without waiting for the disk
	// (see Record.Interim).
	Interim bool
	// StatusLoaded marks a chunk whose notification the caller loaded for this very send,
	// moments before, and found neither cancelled nor final (the sender's small
	// notifications: loaded, their page read, sent). SendChunks does not ask again whether
	// it was cancelled: that is one round trip less on the way to FCM, and a Cancel that
	// commits after the load is like one that commits after SendChunks' own check, which
	// also comes before pacing and the send: the chunk goes out, as any send in flight.
	StatusLoaded bool
	// Span, when set, is the span of the task the chunk belongs to: the chunk's work (its
	// multicasts, hand-off and outcome store) is traced as its children, and its retry
	// and dead-letter tasks carry its trace, even when SendChunks serves chunks of many
	// traces at once.
	Span trace.Span
}

// SendChunk sends one chunk and settles every one of its targets; see SendChunks. Its work
// is traced under ctx's span. A first attempt's chunk that is not final is the sender's
// chunk of a notification whose status it sets after the last one (Chunk.Interim).
func (d *Deliverer) SendChunk(ctx context.Context, n *Notification, targets []Target, attempt int, final bool) (Summary, error) {
	sums, errs := d.SendChunks(ctx, []Chunk{{Notification: n, Targets: targets, Attempt: attempt, Final: final,
		Interim: attempt == 1 && !final, Span: trace.SpanFromContext(ctx)}})
	return sums[0], errs[0]
}

// SendChunks sends chunks (of several notifications, or several chunks of one) and settles
// every target of each: send (the chunks' multicasts concurrently, within the process-wide
// bound), classify each token's result, hand the failures off (one Publish, confirmed, for
// the retry and dead-letter tasks of every chunk) and record the outcomes (one transaction
// for all the chunks). It returns a summary and an error per chunk, in order. An error
// means nothing of that chunk was recorded: the caller hands its message back to the
// broker and the chunk is sent again; one chunk's failure never fails another's (when the
// shared transaction fails, each chunk is recorded on its own). A chunk of a notification
// cancelled meanwhile (checked for all the chunks in one round trip before anything is
// sent, but for those the caller loaded just before: Chunk.StatusLoaded) is not sent, and
// its summary says Cancelled. The sender's chunk is not recorded either (its tokens were
// never sent); a retry's (Attempt > 1) is recorded cancelled: its tokens wait in
// 'retrying', which Cancel settles unless a send in flight when it committed put them
// back, and nothing else would settle them.
func (d *Deliverer) SendChunks(ctx context.Context, chunks []Chunk) ([]Summary, []error) {
	sums, errs := make([]Summary, len(chunks)), make([]error, len(chunks))
	cancelled, err := d.cancelled(ctx, chunks)
	if err != nil {
		for i := range errs {
			errs[i] = err
		}
		return sums, errs
	}
	cs := make([]classified, len(chunks))
	type sending struct {
		i         int
		targets   []Target
		skipped   []Outcome
		remaining time.Duration
	}
	var toSend []sending
	perApp := map[string]int{}
	perAppSpans := map[string][]trace.Span{}
	for i, ch := range chunks {
		n := ch.Notification
		switch remaining := time.Until(n.ExpiresAt); {
		case cancelled[n.ID]:
			sums[i].Cancelled = true
			if ch.Attempt > 1 {
				cs[i] = cancelledRetry(ch.Targets, ch.Attempt-1)
			}
		case len(ch.Targets) == 0:
		case remaining <= 0:
			cs[i] = expired(ch.Targets, ch.Attempt-1)
		default:
			skipped, targets := mutedTargets(ch.Targets, ch.Attempt-1)
			if len(targets) == 0 {
				cs[i].skip(skipped)
				continue
			}
			toSend = append(toSend, sending{i, targets, skipped, remaining})
			perApp[n.app()] += len(targets)
			perAppSpans[n.app()] = append(perAppSpans[n.app()], ch.Span)
		}
	}
	// An app's sends that fit in one grant are reserved together, in one round trip for the
	// whole batch (small notifications); the others pace each chunk in grant-sized pieces.
	prepaid, payErr := d.prepay(ctx, perApp, perAppSpans)
	var wg sync.WaitGroup
	for _, x := range toSend {
		ch := chunks[x.i]
		app := ch.Notification.app()
		if err := payErr[app]; err != nil {
			errs[x.i] = err
			continue
		}
		d.workers.Go(&wg, func() {
			results, err := d.send(tracing.With(ctx, ch.Span), ch.Notification, x.targets, x.remaining, prepaid[app])
			if err != nil {
				errs[x.i] = err
				return
			}
			targets := x.targets
			if channelLost(ctx) {
				targets, results = answered(targets, results)
			}
			cs[x.i] = d.classify(app, targets, results, ch.Attempt)
			cs[x.i].skip(x.skipped)
		})
	}
	wg.Wait()
	// What went out is handed off and recorded even if ctx ended meanwhile (the delivery's
	// channel closed, a task deadline, shutdown), so that whoever gets the task next skips
	// it rather than sending it again. When the channel closed, that next consumer has the
	// task already: this one records only what FCM answered for good (above), and never the
	// final status, which the task's last consumer sets from every outcome.
	lost := channelLost(ctx)
	ctx, cancel := afterSend(ctx)
	defer cancel()
	d.handOff(ctx, chunks, cs, errs)

	var recs []Record
	var recorded []int
	for i, ch := range chunks {
		if errs[i] != nil || len(cs[i].outcomes) == 0 && (!ch.Final || sums[i].Cancelled) {
			continue
		}
		if lost && len(cs[i].outcomes) == 0 {
			continue
		}
		recs = append(recs, Record{ID: ch.Notification.ID, Outcomes: cs[i].outcomes, Final: ch.Final && !lost,
			Interim: ch.Interim, Generation: ch.Notification.Generation})
		recorded = append(recorded, i)
	}
	spans := make([]trace.Span, len(recorded))
	for k, i := range recorded {
		spans[k] = chunks[i].Span
	}
	recSpans := tracing.StartEach(ctx, SpanRecord, spans)
	statuses, recErrs := d.record(ctx, recs)
	recSpans.EndEach(recErrs)
	for k, i := range recorded {
		if errs[i] = recErrs[k]; errs[i] != nil {
			continue
		}
		cs[i].sum.Cancelled = sums[i].Cancelled
		sums[i] = cs[i].sum
		sums[i].Status = statuses[k]
		app := chunks[i].Notification.app()
		if cs[i].sum.Expired > 0 {
			d.sends.WithLabelValues(app, schema.OutcomeExpired, schema.CodeExpired).Add(float64(cs[i].sum.Expired))
		}
		if cs[i].sum.Skipped > 0 {
			d.sends.WithLabelValues(app, schema.OutcomeSkippedPreference, "").Add(float64(cs[i].sum.Skipped))
		}
	}
	return sums, errs
}

// cancelled returns which of the chunks' notifications were cancelled, asking the
// database about those whose status the caller did not load just before (Chunk.StatusLoaded).
func (d *Deliverer) cancelled(ctx context.Context, chunks []Chunk) (map[uuid.UUID]bool, error) {
	var ids []uuid.UUID
	for _, ch := range chunks {
		if !ch.StatusLoaded {
			ids = append(ids, ch.Notification.ID)
		}
	}
	if len(ids) == 0 {
		return nil, nil
	}
	return d.store.Cancelled(ctx, ids)
}

// settleGrace is how long a chunk whose tokens were sent may still take to hand off its
// failures and record its outcomes once the caller's ctx has ended. It fits within the 5 s
// a service's broker connection outlives its consumers' ShutdownTimeout.
const settleGrace = 5 * time.Second

// afterSend returns a ctx for settling what was sent: ctx's values, and an end settleGrace
// after ctx's (never earlier), so that a database or broker that hangs cannot hold the
// task for ever.
func afterSend(ctx context.Context) (context.Context, context.CancelFunc) {
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stop := context.AfterFunc(ctx, func() { time.AfterFunc(settleGrace, cancel) })
	return sctx, func() {
		stop()
		cancel()
	}
}

// channelLost reports whether ctx ended because the delivery being handled lost its broker
// channel: the broker has given the task to another consumer already.
func channelLost(ctx context.Context) bool {
	return errors.Is(context.Cause(ctx), rabbit.ErrChannelClosed)
}

// answered returns the targets FCM answered for good (delivered, token gone, refused for
// good) with their results. A transient failure, such as a request cut as the channel
// closed, is left out: recorded retrying it would race the outcome the task's next consumer
// records for the same token, and that consumer sends it anyway.
func answered(targets []Target, results []fcm.Result) ([]Target, []fcm.Result) {
	var ts []Target
	var rs []fcm.Result
	for i, r := range results {
		if r.Err == nil || !errors.Is(r.Err, fcm.ErrTransient) {
			ts, rs = append(ts, targets[i]), append(rs, r)
		}
	}
	return ts, rs
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

// record writes recs in one transaction and returns each one's status and error. When the
// transaction fails it records each on its own, so that one record the database refuses
// fails only its own chunk.
func (d *Deliverer) record(ctx context.Context, recs []Record) ([]string, []error) {
	errs := make([]error, len(recs))
	if len(recs) == 0 {
		return nil, errs
	}
	statuses, err := d.store.RecordMany(ctx, recs)
	if err == nil || len(recs) == 1 {
		for i := range errs {
			errs[i] = err
		}
		return statuses, errs
	}
	d.log.Warn("recording a batch of chunks failed; recording each on its own", "chunks", len(recs), "err", err)
	statuses = make([]string, len(recs))
	for i, r := range recs {
		var st []string
		st, errs[i] = d.store.RecordMany(ctx, []Record{r})
		if errs[i] == nil {
			statuses[i] = st[0]
		}
	}
	return statuses, errs
}

// prepay reserves, for each app whose sends in perApp fit in one grant of the Pacer, all of
// them at once, and reports which apps it paid for; an app whose reservation failed has
// its error (nothing of it may be sent). Without a Pacer nothing is paced. Each of the
// app's chunks (spans) gets a pace.wait span for the shared reservation.
func (d *Deliverer) prepay(ctx context.Context, perApp map[string]int, spans map[string][]trace.Span) (map[string]bool, map[string]error) {
	paid, errs := map[string]bool{}, map[string]error{}
	if d.opts.Pacer == nil {
		return paid, errs
	}
	for app, n := range perApp {
		if n > d.opts.Pacer.Grant(app) {
			continue
		}
		waits := startPaceEach(ctx, spans[app], app, n)
		err := d.opts.Pacer.TakeLeased(ctx, app, n)
		waits.End(err)
		if err != nil {
			errs[app] = fmt.Errorf("pace %d tokens of app %s: %w", n, app, err)
			continue
		}
		paid[app] = true
	}
	return paid, errs
}

// send sends n to targets through n's app, with the TTL that remains, within the
// process-wide bound on FCM requests in flight and, with a Pacer and unless prepaid, within
// the app's shared budget: the targets go out in grant-sized multicasts, each once its
// grant is due. It returns one result per target; an error only when nothing was sent for
// a reason retrying the task may fix (not a transient FCM failure: those are per-token
// results).
func (d *Deliverer) send(ctx context.Context, n *Notification, targets []Target, ttl time.Duration, prepaid bool) ([]fcm.Result, error) {
	msg := n.Message
	msg.TTL = ttl
	tokens := make([]string, len(targets))
	for i, t := range targets {
		tokens[i] = t.Token
	}
	app := n.app()
	p := d.fcm
	if d.opts.Apps != nil {
		var ok bool
		if p, ok = d.opts.Apps(app); !ok {
			return failAll(tokens, &fcm.SendError{Code: CodeUnknownApp, Kind: fcm.ErrPermanent,
				Err: fmt.Errorf("app %q is not configured in this process (FCM_APPS_FILE)", app)}), nil
		}
	}
	paced := d.opts.Pacer != nil && !prepaid
	piece := len(tokens)
	if paced {
		piece = max(d.opts.Pacer.Grant(app), 1)
	}
	results := make([]fcm.Result, 0, len(tokens))
	for len(results) < len(tokens) {
		part := tokens[len(results):min(len(results)+piece, len(tokens))]
		if paced {
			wait := startPace(ctx, app, len(part))
			err := d.opts.Pacer.Take(ctx, app, len(part))
			tracing.End(wait, err)
			if err != nil {
				if len(results) == 0 {
					return nil, fmt.Errorf("pace %d tokens of %s: %w", len(tokens), n.ID, err)
				}
				// Some went out: they keep their results, the rest is retried.
				rest := failAll(tokens[len(results):], &fcm.SendError{Code: "PACED", Kind: fcm.ErrTransient, Err: err})
				return append(results, rest...), nil
			}
		}
		r, err := d.multicast(ctx, p, app, msg, part)
		if err != nil {
			if len(results) == 0 {
				return nil, fmt.Errorf("send %d tokens of %s: %w", len(tokens), n.ID, err)
			}
			r = failAll(part, &fcm.SendError{Code: fcm.Code(err), Kind: fcm.ErrTransient, Err: err})
		}
		results = append(results, r...)
		d.throttle(ctx, app, r)
	}
	return results, nil
}

// multicast makes one multicast within the process-wide bound on FCM requests in flight.
// An error means nothing was sent; transient per-token failures are results.
func (d *Deliverer) multicast(ctx context.Context, p Pusher, app string, msg fcm.Message, tokens []string) (results []fcm.Result, err error) {
	ctx, span := tracing.Tracer().Start(ctx, SpanMulticast, trace.WithSpanKind(trace.SpanKindClient))
	defer func() { endMulticast(span, app, len(tokens), results, err) }()
	// The SDK sends a multicast's tokens requestsPerMulticast at a time.
	weight := int64(min(len(tokens), requestsPerMulticast))
	if err := d.slots.Acquire(ctx, weight); err != nil {
		return nil, err
	}
	start := time.Now()
	results, err = p.SendMulticast(ctx, msg, tokens)
	d.sendLatency.Observe(time.Since(start).Seconds())
	d.slots.Release(weight)
	if err == nil {
		return results, nil
	}
	if !errors.Is(err, fcm.ErrTransient) {
		return nil, err
	}
	if len(results) != len(tokens) {
		// The whole call failed transiently with no per-token answers (FCM unreachable):
		// every token failed alike. With answers (ctx ended mid-call), the tokens that were
		// delivered keep their outcome.
		results = failAll(tokens, err)
	}
	return results, nil
}

// throttle tells the Pacer when FCM answered 429 for some of results, with the longest
// Retry-After among them: the whole app backs off, in every process. A failure to tell is
// logged; the tokens are retried either way.
func (d *Deliverer) throttle(ctx context.Context, app string, results []fcm.Result) {
	if d.opts.Pacer == nil {
		return
	}
	quota, retryAfter := false, time.Duration(0)
	for _, r := range results {
		if se, ok := errors.AsType[*fcm.SendError](r.Err); ok && se.Code == "QUOTA_EXCEEDED" {
			quota, retryAfter = true, max(retryAfter, se.RetryAfter)
		}
	}
	if !quota {
		return
	}
	if err := d.opts.Pacer.Throttle(ctx, app, retryAfter); err != nil {
		d.log.Warn("could not back the app's FCM budget off after a 429", "app", app, "err", err)
	}
}

// failAll returns a result with err for each token.
func failAll(tokens []string, err error) []fcm.Result {
	results := make([]fcm.Result, len(tokens))
	for i, tok := range tokens {
		results[i] = fcm.Result{Token: tok, Err: err}
	}
	return results
}

// skip adds the outcomes of muted targets, never sent, to what a chunk came to.
func (c *classified) skip(skipped []Outcome) {
	c.outcomes = append(c.outcomes, skipped...)
	c.sum.Skipped += len(skipped)
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
func (d *Deliverer) classify(app string, targets []Target, results []fcm.Result, attempt int) classified {
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
		d.sends.WithLabelValues(app, o.Outcome, code).Inc()
		c.outcomes[i] = o
	}
	return c
}

// handOff publishes, for each chunk sent (cs[i] for chunks[i], errs[i] nil), one retry
// task for its transient failures (to the wait level of their next attempt) and one
// dead-letter task for the rest, all in one Publish, and returns once the broker confirmed
// them: only then may the outcomes be recorded. A chunk whose tasks were not confirmed gets
// its error in errs.
func (d *Deliverer) handOff(ctx context.Context, chunks []Chunk, cs []classified, errs []error) {
	var msgs []rabbit.Message
	var owner []int // owner[k]: the chunk msgs[k] belongs to
	spans := map[int]trace.Span{}
	defer func() {
		for i, span := range spans {
			tracing.End(span, errs[i])
		}
	}()
	for i, ch := range chunks {
		if errs[i] != nil || len(cs[i].retry)+len(cs[i].dead) == 0 {
			continue
		}
		c, id := cs[i], ch.Notification.ID
		// The tasks continue the chunk's trace from its hand-off span.
		hctx := d.startHandOff(ctx, ch, c, spans, i)
		if len(c.retry) > 0 {
			m, err := d.retryMessage(id, c.retry, ch.Attempt+1, c.retryAfter)
			if err != nil {
				errs[i] = err
				continue
			}
			m.Headers = rabbit.WithTrace(hctx, m.Headers)
			msgs, owner = append(msgs, m), append(owner, i)
		}
		if len(c.dead) > 0 {
			m, err := deadMessage(id.String(), c.deadReason, c.dead, ch.Attempt)
			if err != nil {
				errs[i] = err
				continue
			}
			m.Headers = rabbit.WithTrace(hctx, m.Headers)
			msgs, owner = append(msgs, m), append(owner, i)
		}
	}
	if len(msgs) == 0 {
		return
	}
	if err := d.pub.Publish(ctx, msgs...); err != nil {
		pe, ok := errors.AsType[*rabbit.PublishError](err)
		for k, i := range owner {
			if !ok || slices.ContainsFunc(pe.Failed, func(f rabbit.FailedMessage) bool { return f.Index == k }) {
				errs[i] = cmp.Or(errs[i], fmt.Errorf("hand off failures of %s: %w", chunks[i].Notification.ID, err))
			}
		}
	}
	counted := map[int]bool{}
	for _, i := range owner {
		if errs[i] != nil || counted[i] {
			continue
		}
		counted[i] = true
		d.retries.Add(float64(len(cs[i].retry)))
		if len(cs[i].dead) > 0 {
			d.dead.WithLabelValues(cs[i].deadReason).Inc()
		}
	}
}

// expired is what a chunk comes to when its notification's TTL passed before delivery:
// every target recorded expired, counted, never alerted.
func expired(targets []Target, attempts int) classified {
	c := classified{outcomes: make([]Outcome, len(targets))}
	for i, t := range targets {
		c.outcomes[i] = Outcome{Target: t, Outcome: schema.OutcomeExpired, Attempts: attempts, ErrorCode: schema.CodeExpired,
			ErrorMessage: "the notification's TTL passed before delivery"}
	}
	c.sum.Expired = len(targets)
	return c
}

// cancelledRetry is what a retry's chunk comes to when its notification was cancelled:
// every target recorded cancelled, never sent again, with no error (its last transient
// failure is not kept, as when Cancel settles it).
func cancelledRetry(targets []Target, attempts int) classified {
	c := classified{outcomes: make([]Outcome, len(targets))}
	for i, t := range targets {
		c.outcomes[i] = Outcome{Target: t, Outcome: schema.OutcomeCancelled, Attempts: attempts}
	}
	c.sum.CancelledTokens = len(targets)
	return c
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
func (d *Deliverer) DeadLetter(ctx context.Context, rd *rabbit.Delivery, reason, notificationID string, cause error) (err error) {
	ctx, span := tracing.Tracer().Start(ctx, SpanDeadLetter, trace.WithSpanKind(trace.SpanKindProducer))
	defer func() { endDeadLetter(span, reason, err) }()
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
