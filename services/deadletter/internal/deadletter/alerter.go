package deadletter

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/slack-go/slack"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"notify/pkg/tracing"
)

// AlertLockKey is the PostgreSQL advisory lock whose holder is the one replica that alerts
// ("deadlett" in ASCII).
const AlertLockKey int64 = 0x646561646c657474

// Sink is where the Alerter posts alerts; *Webhook, *Bot and *Log satisfy it.
type Sink interface {
	Name() string
	Post(ctx context.Context, a Alert) error
}

// AlerterOptions tune an Alerter. The zero value is usable.
type AlerterOptions struct {
	// Interval is how often the alerter looks for unalerted rows; default 30s.
	Interval time.Duration
	// MinInterval is the least time between two posts; default 1m.
	MinInterval time.Duration
	// MaxBackoff caps the wait after failed posts, which doubles from MinInterval with
	// every consecutive failure; default 5 × MinInterval.
	MaxBackoff time.Duration
	// BatchSize is the most dead letters one alert covers; default 10,000.
	BatchSize int
	// PostTimeout bounds one post; default 15s.
	PostTimeout time.Duration
	// LockKey is the advisory lock that elects the alerting replica; default AlertLockKey.
	LockKey int64
}

// Alerter turns stored dead letters that were not alerted yet into grouped alerts.
//
// Each post covers up to BatchSize unalerted rows grouped by reason, and only after the
// sink accepted it are exactly those rows marked alerted: a sink that is down delays alerts
// and never loses them, and a crash between the post and the mark repeats an alert rather
// than skipping one. Posts are at least MinInterval apart, so a flood of dead letters is a
// handful of messages. Only the replica holding a session advisory lock alerts; it keeps
// the lock on a connection of its own for as long as it runs, so the rate limit holds
// across replicas.
type Alerter struct {
	pool *pgxpool.Pool
	sink Sink
	log  *slog.Logger
	opts AlerterOptions

	// State of the Run goroutine.
	leader   *pgx.Conn // holds the advisory lock; nil when another replica alerts
	next     time.Time // no post before this
	failures int       // consecutive failed posts

	backlog prometheus.Gauge
	posts   *prometheus.CounterVec
	alerted prometheus.Counter
}

// NewAlerter returns an Alerter that posts to s, and registers its metrics.
func NewAlerter(pool *pgxpool.Pool, s Sink, log *slog.Logger, reg prometheus.Registerer, opts AlerterOptions) *Alerter {
	opts.Interval = cmp.Or(opts.Interval, 30*time.Second)
	opts.MinInterval = cmp.Or(opts.MinInterval, time.Minute)
	opts.MaxBackoff = max(cmp.Or(opts.MaxBackoff, 5*opts.MinInterval), opts.MinInterval)
	opts.BatchSize = cmp.Or(opts.BatchSize, 10_000)
	opts.PostTimeout = cmp.Or(opts.PostTimeout, 15*time.Second)
	opts.LockKey = cmp.Or(opts.LockKey, AlertLockKey)
	a := &Alerter{
		pool: pool,
		sink: s,
		log:  log.With("sink", s.Name()),
		opts: opts,
		backlog: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "notify_deadletter_unalerted", Help: "Stored dead letters no alert has covered yet.",
		}),
		posts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "notify_deadletter_alerts_total", Help: "Alert posts, by sink and result (ok, error, rate_limited).",
		}, []string{"sink", "result"}),
		alerted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "notify_deadletter_alerted_total", Help: "Dead letters covered by a successful alert.",
		}),
	}
	reg.MustRegister(a.backlog, a.posts, a.alerted)
	for _, result := range []string{"ok", "error", "rate_limited"} {
		a.posts.WithLabelValues(s.Name(), result)
	}
	return a
}

// Run alerts every Interval until ctx ends, then gives up the lock and returns nil.
func (a *Alerter) Run(ctx context.Context) error {
	defer a.resign()
	t := time.NewTicker(a.opts.Interval)
	defer t.Stop()
	for {
		a.tick(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// tick posts one alert when there is something to say, the rate limit allows it and this
// replica holds the lock.
func (a *Alerter) tick(ctx context.Context) {
	var backlog int
	if err := a.pool.QueryRow(ctx, `SELECT count(*) FROM dead_letters WHERE alerted_at IS NULL`).Scan(&backlog); err != nil {
		if ctx.Err() == nil {
			a.log.Warn("count unalerted dead letters", "err", err)
		}
		return
	}
	a.backlog.Set(float64(backlog))
	if backlog == 0 || time.Now().Before(a.next) {
		return
	}
	conn, err := a.lead(ctx)
	if err != nil {
		if ctx.Err() == nil {
			a.log.Warn("take the alert lock", "err", err)
		}
		return
	}
	if conn == nil {
		return
	}
	rows, err := unalerted(ctx, conn, a.opts.BatchSize)
	if err != nil {
		if ctx.Err() == nil {
			a.log.Warn("read unalerted dead letters", "err", err)
		}
		a.resign()
		return
	}
	if len(rows) == 0 {
		return
	}
	alert := summarize(rows, backlog)

	spanCtx, span := a.startAlert(ctx, conn, rows)
	postCtx, cancel := context.WithTimeout(spanCtx, a.opts.PostTimeout)
	err = a.sink.Post(postCtx, alert)
	cancel()
	tracing.End(span, err)
	if err != nil {
		a.postFailed(err, alert)
		return
	}
	a.posts.WithLabelValues(a.sink.Name(), "ok").Inc()
	a.failures = 0
	a.next = time.Now().Add(a.opts.MinInterval)

	ids := make([]int64, len(rows))
	for i, r := range rows {
		ids[i] = r.ID
	}
	// The alert is out: mark its rows even when ctx has just ended.
	markCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if _, err := conn.Exec(markCtx, `UPDATE dead_letters SET alerted_at = now() WHERE id = ANY($1) AND alerted_at IS NULL`, ids); err != nil {
		a.log.Error("alert posted but its dead letters could not be marked; they will be alerted again", "dead_letters", len(ids), "err", err)
		a.resign()
		return
	}
	a.alerted.Add(float64(len(ids)))
	a.backlog.Set(float64(alert.Remaining))
	a.log.Info("dead-letter alert posted", "dead_letters", alert.Total, "tokens", alert.Tokens, "remaining", alert.Remaining)
}

// postFailed counts and logs a failed post and backs off: the wait doubles from
// MinInterval with every consecutive failure, up to MaxBackoff, and is never shorter than
// the Retry-After Slack asked for.
func (a *Alerter) postFailed(err error, alert Alert) {
	a.failures++
	wait := min(a.opts.MinInterval<<min(a.failures-1, 20), a.opts.MaxBackoff)
	result := "error"
	var limited *slack.RateLimitedError
	if errors.As(err, &limited) {
		result = "rate_limited"
		wait = max(wait, limited.RetryAfter)
	}
	a.posts.WithLabelValues(a.sink.Name(), result).Inc()
	a.next = time.Now().Add(wait)
	a.log.Error("could not post dead-letter alert; will try again", "err", err, "result", result,
		"dead_letters", alert.Total+alert.Remaining, "failures", a.failures, "retry_in", wait)
}

// lead returns the connection holding the alert lock, taking the lock if it is free, or
// nil when another replica holds it. The lock lives as long as the connection: it is
// hijacked from the pool so that it is never handed to anyone else.
func (a *Alerter) lead(ctx context.Context) (*pgx.Conn, error) {
	if a.leader != nil {
		return a.leader, nil
	}
	pc, err := a.pool.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	var ok bool
	if err := pc.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, a.opts.LockKey).Scan(&ok); err != nil {
		pc.Release()
		return nil, fmt.Errorf("pg_try_advisory_lock: %w", err)
	}
	if !ok {
		pc.Release() // it holds no lock, so it may go back to the pool
		a.log.Debug("another replica is sending dead-letter alerts")
		return nil, nil
	}
	a.leader = pc.Hijack()
	a.log.Info("this replica sends the dead-letter alerts")
	return a.leader, nil
}

// resign closes the lock's connection, which releases the lock.
func (a *Alerter) resign() {
	if a.leader == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := a.leader.Close(ctx); err != nil {
		a.log.Debug("close alert lock connection", "err", err)
	}
	a.leader = nil
}

// unalerted reads the oldest unalerted rows, at most limit of them.
func unalerted(ctx context.Context, conn *pgx.Conn, limit int) ([]pendingRow, error) {
	rows, err := conn.Query(ctx, `
		SELECT id, reason, coalesce(notification_id::text, ''), token_count, created_at
		FROM dead_letters WHERE alerted_at IS NULL ORDER BY id LIMIT $1`, limit)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (pendingRow, error) {
		var p pendingRow
		err := r.Scan(&p.ID, &p.Reason, &p.NotificationID, &p.TokenCount, &p.CreatedAt)
		return p, err
	})
}

// startAlert starts the span of one alert post: a trace of its own, linked to the traces of
// the dead letters it covers (the traceparent their message carried, kept in the row's
// headers), read only when the span records.
func (a *Alerter) startAlert(ctx context.Context, conn *pgx.Conn, rows []pendingRow) (context.Context, trace.Span) {
	ctx, span := tracing.Tracer().Start(ctx, SpanAlert, trace.WithNewRoot())
	if !span.IsRecording() {
		return ctx, span
	}
	span.SetAttributes(attribute.String("notify.sink", a.sink.Name()), attribute.Int("notify.dead_letters", len(rows)))
	ids := make([]int64, 0, min(len(rows), maxAlertLinks))
	for _, r := range rows[:min(len(rows), maxAlertLinks)] {
		ids = append(ids, r.ID)
	}
	result, err := conn.Query(ctx, `SELECT headers->>'traceparent' FROM dead_letters
		WHERE id = ANY($1) AND headers ? 'traceparent'`, ids)
	if err == nil {
		var parents []string
		parents, err = pgx.CollectRows(result, pgx.RowTo[string])
		for _, tp := range parents {
			if sc := tracing.Remote(tp); sc.IsValid() {
				span.AddLink(trace.Link{SpanContext: sc})
			}
		}
	}
	if err != nil {
		a.log.Debug("read the traces of the alerted dead letters", "err", err)
	}
	return ctx, span
}

// maxAlertLinks is how many dead letters' traces an alert's span links to at most (the
// SDK's default limit of links per span).
const maxAlertLinks = 128
