// Package server implements notify's gRPC API on top of PostgreSQL.
package server

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"notify/pkg/schema"
	notifyv1 "notify/proto/gen/notify/v1"
	"notify/services/producer/internal/outbox"
)

// Notifications implements NotificationService.
type Notifications struct {
	notifyv1.UnimplementedNotificationServiceServer
	pool *pgxpool.Pool
	log  *slog.Logger
	wake func() // tells the outbox relay a row was committed; may be nil

	accepted   prometheus.Counter
	duplicates prometheus.Counter
	rejected   prometheus.Counter
}

// NewNotifications returns the NotificationService and registers its metrics. wake, when
// set, is called after each accepted notification's commit (outbox.Relay.Wake).
func NewNotifications(pool *pgxpool.Pool, log *slog.Logger, reg prometheus.Registerer, wake func()) *Notifications {
	n := &Notifications{
		pool: pool,
		log:  log,
		wake: wake,
		accepted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "notify_publish_accepted_total", Help: "Notifications accepted by Publish (duplicates excluded).",
		}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "notify_publish_duplicates_total", Help: "Publish calls answered with an existing notification (same idempotency key).",
		}),
		rejected: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "notify_publish_rejected_total", Help: "Publish calls refused as invalid.",
		}),
	}
	reg.MustRegister(n.accepted, n.duplicates, n.rejected)
	return n
}

// publishSQL writes the notification and its outbox row in one statement, hence one
// transaction: either both exist or neither. A repeated idempotency key inserts nothing.
const publishSQL = `
WITH n AS (
	INSERT INTO notifications (id, caller, idempotency_key, type, request, expires_at)
	VALUES ($1, $2, $3, $4, $5, $6)
	ON CONFLICT (caller, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
	RETURNING id
), o AS (
	INSERT INTO outbox (notification_id, routing_key, message_type, body)
	SELECT id, $7, $8, $9 FROM n
)
SELECT id FROM n`

// Publish validates the request, records it with its outbox row and returns its id.
func (s *Notifications) Publish(ctx context.Context, req *notifyv1.PublishRequest) (*notifyv1.PublishResponse, error) {
	if v := validatePublish(req); len(v) > 0 {
		s.rejected.Inc()
		return nil, invalidArgument(v)
	}
	caller := Caller(ctx)
	id, err := uuid.NewV7() // time-ordered: index-friendly and sortable
	if err != nil {
		return nil, toStatus(ctx, s.log, "generate notification id", err)
	}
	now := time.Now()
	ttl := MaxTTL
	if t := req.GetOptions().GetTtl(); t != nil {
		ttl = t.AsDuration()
	}
	request, err := schema.EncodeRequest(req)
	if err != nil {
		return nil, toStatus(ctx, s.log, "encode request", err)
	}
	task, err := outbox.SendTask(id, outbox.CausePublish, now)
	if err != nil {
		return nil, toStatus(ctx, s.log, "encode send task", err)
	}
	var key *string
	if k := req.GetIdempotencyKey(); k != "" {
		key = &k
	}

	var got uuid.UUID
	err = s.pool.QueryRow(ctx, publishSQL, id, caller, key, req.GetType(), request, now.Add(ttl),
		task.RoutingKey, task.MessageType, task.Body).Scan(&got)
	switch {
	case err == nil:
		s.accepted.Inc()
		if s.wake != nil {
			s.wake()
		}
		return &notifyv1.PublishResponse{NotificationId: got.String()}, nil
	case err != pgx.ErrNoRows:
		return nil, toStatus(ctx, s.log, "store notification", err, "caller", caller)
	}
	// Nothing inserted: the idempotency key was used before. The conflicting row is
	// committed (ON CONFLICT waited for it), so this read finds it.
	err = s.pool.QueryRow(ctx, "SELECT id FROM notifications WHERE caller = $1 AND idempotency_key = $2", caller, key).Scan(&got)
	if err != nil {
		return nil, toStatus(ctx, s.log, "look up duplicate", fmt.Errorf("idempotency key %q: %w", *key, err), "caller", caller)
	}
	s.duplicates.Inc()
	return &notifyv1.PublishResponse{NotificationId: got.String(), Duplicate: true}, nil
}
