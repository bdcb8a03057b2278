// Package server implements notify's gRPC API on top of PostgreSQL.
package server

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"notify/pkg/schema"
	"notify/pkg/tracing"
	notifyv1 "notify/proto/gen/notify/v1"
	"notify/services/producer/internal/outbox"
)

// Notifications implements NotificationService.
type Notifications struct {
	notifyv1.UnimplementedNotificationServiceServer
	pool   *pgxpool.Pool
	db     querier // where rows are written: pool, except in tests that break it
	log    *slog.Logger
	wake   func() // tells the outbox relay rows were committed; may be nil
	commit *committer
	apps   Apps

	accepted   prometheus.Counter
	duplicates prometheus.Counter
	rejected   *prometheus.CounterVec
	batchSize  prometheus.Histogram
}

// NewNotifications returns the NotificationService and registers its metrics. wake, when
// set, is called once after each committed batch that wrote a notification
// (outbox.Relay.Wake). Concurrent Publish calls are written together as gc says.
func NewNotifications(pool *pgxpool.Pool, log *slog.Logger, reg prometheus.Registerer, wake func(), gc GroupCommit) *Notifications {
	n := &Notifications{
		pool: pool,
		db:   pool,
		log:  log,
		wake: wake,
		accepted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "notify_publish_accepted_total", Help: "Notifications accepted by Publish and PublishBatch (duplicates excluded).",
		}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "notify_publish_duplicates_total", Help: "Publish requests answered with an existing notification (same idempotency key).",
		}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "notify_publish_rejected_total",
			Help: "Publish requests refused as invalid, by reason: the request field (recipients, content, data, options, ...) of the first problem found, or permission_denied.",
		}, []string{"reason"}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "notify_publish_batch_size",
			Help:    "Notifications written per transaction (Publish group commits and PublishBatch calls).",
			Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128, 256, 500},
		}),
	}
	n.commit = newCommitter(gc, func(ctx context.Context, rows []row) []stored {
		return storeRows(ctx, n.db, rows)
	}, n.committed)
	reg.MustRegister(n.accepted, n.duplicates, n.rejected, n.batchSize)
	fields := (&notifyv1.PublishRequest{}).ProtoReflect().Descriptor().Fields()
	for i := range fields.Len() {
		n.rejected.WithLabelValues(string(fields.Get(i).Name())) // every reason at 0 from the start
	}
	n.rejected.WithLabelValues("permission_denied")
	return n
}

// committed counts a written batch and wakes the relay once for it.
func (s *Notifications) committed(rows []row, results []stored) {
	s.batchSize.Observe(float64(len(rows)))
	wrote := false
	for _, r := range results {
		switch {
		case r.inserted:
			wrote = true
			s.accepted.Inc()
		case r.duplicate:
			s.duplicates.Inc()
		}
	}
	if wrote && s.wake != nil {
		s.wake()
	}
}

// newRow builds what storing req for caller writes.
func newRow(caller string, req *notifyv1.PublishRequest) (row, error) {
	id, err := uuid.NewV7() // time-ordered: index-friendly and sortable
	if err != nil {
		return row{}, fmt.Errorf("generate notification id: %w", err)
	}
	now := time.Now()
	ttl := MaxTTL
	if t := req.GetOptions().GetTtl(); t != nil {
		ttl = t.AsDuration()
	}
	// The TTL counts from the time it is to be sent.
	var sendAt time.Time
	start := now
	if at := req.GetOptions().GetSendAt(); at != nil && at.AsTime().After(now) {
		sendAt, start = at.AsTime(), at.AsTime()
	}
	request, err := schema.EncodeRequest(req)
	if err != nil {
		return row{}, err
	}
	task, err := outbox.PublishTask(id, req, now)
	if err != nil {
		return row{}, err
	}
	return row{
		id: id, caller: caller, key: req.GetIdempotencyKey(), typ: req.GetType(),
		request: request, expiresAt: start.Add(ttl), sendAt: sendAt, task: task, app: schema.AppOf(req),
	}, nil
}

// SetApps sets the apps Publish accepts (by default only "default"); call it before serving.
func (s *Notifications) SetApps(apps Apps) { s.apps = apps }

// admit checks what a request must pass before anything is written, for Publish and for
// each request of PublishBatch; the error is the answer. v holds violations found before
// (PublishBatch's per-request text check).
func (s *Notifications) admit(ctx context.Context, req *notifyv1.PublishRequest, v violations) error {
	v = append(v, validatePublish(req)...)
	s.apps.check(&v, "app", req.GetApp())
	if len(v) > 0 {
		s.rejected.WithLabelValues(rejectReason(v)).Inc()
		return invalidArgument(v)
	}
	if err := permitApp(ctx, s.log, req.GetApp()); err != nil {
		s.rejected.WithLabelValues("app").Inc()
		return err
	}
	if req.GetOptions().GetIgnorePreferences() {
		if err := permitIgnorePreferences(ctx, s.log); err != nil {
			s.rejected.WithLabelValues("permission_denied").Inc()
			return err
		}
	}
	return nil
}

// Publish validates the request, records it with its outbox row and returns its id once
// committed. Concurrent calls share transactions (group commit); each is answered for its
// own row.
func (s *Notifications) Publish(ctx context.Context, req *notifyv1.PublishRequest) (*notifyv1.PublishResponse, error) {
	if err := s.admit(ctx, req, nil); err != nil {
		return nil, err
	}
	caller := Caller(ctx)
	r, err := newRow(caller, req)
	if err != nil {
		return nil, toStatus(ctx, s.log, "prepare notification", err)
	}
	r.task.Traceparent = tracing.Traceparent(ctx) // this call's trace, for its own row
	got, err := s.commit.submit(ctx, r)
	if err == nil {
		err = got.err
	}
	if err != nil {
		return nil, toStatus(ctx, s.log, "store notification", err, "caller", caller)
	}
	return &notifyv1.PublishResponse{NotificationId: got.id.String(), Duplicate: got.duplicate}, nil
}

// rejectReason names why a Publish was refused, for notify_publish_rejected_total: the
// top-level request field of the first violation ("recipients" for
// "recipients.user_ids.user_ids[3]").
func rejectReason(v violations) string {
	field := v[0].GetField()
	if i := strings.IndexAny(field, ".["); i >= 0 {
		field = field[:i]
	}
	return field
}
