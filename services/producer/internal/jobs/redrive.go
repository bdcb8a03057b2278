package jobs

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"notify/pkg/schema"
	"notify/services/producer/internal/outbox"
)

// RedriveOptions say when a notification counts as stuck.
type RedriveOptions struct {
	// After is how long a PENDING notification may go without any change (no chunk
	// recorded) before it is re-driven.
	After time.Duration
	// MaxRetryDelay is the longest a token waits in a retry wait queue (RETRY_MAX_DELAY).
	// A RETRYING notification, and a 'retrying' token, are stuck only after After plus
	// this: until then a retry may legitimately still be waiting in RabbitMQ.
	MaxRetryDelay time.Duration
	// Batch is how many notifications one transaction re-drives.
	Batch int
}

// stuckSQL picks stuck notifications: unfinished, unchanged for long enough, and with no
// outbox row waiting to be published (a row waiting means the broker or the relay is
// behind, and the task will arrive: re-driving would only duplicate it). Rows locked by a
// concurrent replay are skipped; the replay changes them anyway.
const stuckSQL = `
SELECT id, expires_at <= now() FROM notifications n
WHERE status IN ` + schema.InFlightStatuses + `
  AND updated_at < now() - make_interval(secs => CASE WHEN status = '` + schema.StatusPending + `' THEN $1::float8 ELSE $2::float8 END)
  AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.notification_id = n.id AND o.published_at IS NULL)
ORDER BY updated_at
LIMIT $3
FOR UPDATE SKIP LOCKED`

// settleStaleRetriesSQL moves a stuck notification's stale 'retrying' tokens out of
// 'retrying', where the sender would skip them: to 'failed' (which the sender sends
// again: no dead_letter_generation, as nothing dead-lettered them) or, when the notification's TTL has passed, to 'expired'. The counts move with
// them.
const settleStaleRetriesSQL = `
WITH input AS (
	SELECT * FROM unnest($1::uuid[], $2::bool[]) AS t(id, expired)
), moved AS (
	UPDATE deliveries d SET
		outcome = CASE WHEN i.expired THEN '` + schema.OutcomeExpired + `' ELSE '` + schema.OutcomeFailed + `' END,
		error_code = CASE WHEN i.expired THEN '` + schema.CodeExpired + `' ELSE d.error_code END,
		error_message = CASE WHEN i.expired THEN 'the notification''s TTL passed before delivery'
			ELSE 'no retry arrived within REDRIVE_AFTER + RETRY_MAX_DELAY; re-driven' END,
		dead_letter_generation = NULL, updated_at = now()
	FROM input i
	WHERE d.notification_id = i.id AND d.outcome = '` + schema.OutcomeRetrying + `'
	  AND (i.expired OR d.updated_at < now() - make_interval(secs => $3))
	RETURNING d.notification_id, d.outcome
), delta AS (
	SELECT notification_id,
		count(*) FILTER (WHERE outcome = '` + schema.OutcomeFailed + `') AS failed,
		count(*) FILTER (WHERE outcome = '` + schema.OutcomeExpired + `') AS expired
	FROM moved GROUP BY notification_id
)
UPDATE notifications n SET
	retrying = n.retrying - delta.failed - delta.expired,
	failed = n.failed + delta.failed,
	expired = n.expired + delta.expired
FROM delta WHERE n.id = delta.notification_id`

// redriveSetSQL sets the re-driven notifications $1 pending, or expired for those in $2,
// with their status events.
var redriveSetSQL = schema.ChangeStatusSQL(
	"CASE WHEN n.id = ANY($2) THEN '"+schema.StatusExpired+"' ELSE '"+schema.StatusPending+"' END",
	", updated_at = now()", "n.id = ANY($1)")

// Redrive returns the job that re-drives stuck notifications.
//
// A notification is stuck when it stayed PENDING for After, or RETRYING for After plus
// MaxRetryDelay, with no unpublished outbox row: its SendTask or its retry tasks were lost
// (e.g. dead-lettered by the queue's delivery limit after repeated crashes). Re-driving
// moves its 'retrying' tokens older than After + MaxRetryDelay to 'failed' (their retry is
// not coming; left 'retrying', the sender would skip them), sets it PENDING and writes an
// outbox row with SendTask{cause: "redrive"}: the sender then sends every token not yet
// settled, as it does for a replay. One whose TTL has passed is settled as EXPIRED instead.
//
// A retry that was only late, not lost, can then meet its token already re-sent: the
// retrier skips tokens that are delivered, so at worst a token that failed again is sent
// once more. After should exceed the longest the send queue is expected to lag behind.
func Redrive(opts RedriveOptions, interval time.Duration, log *slog.Logger, reg prometheus.Registerer) Job {
	redriven := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "notify_notifications_redriven_total", Help: "Stuck notifications re-driven (sent again) or expired by the re-drive job.",
	}, []string{"result"})
	reg.MustRegister(redriven)
	redriven.WithLabelValues("sent")
	redriven.WithLabelValues("expired")
	return Job{
		Name:     "redrive",
		LockKey:  RedriveLockKey,
		Interval: interval,
		Run: func(ctx context.Context, conn *pgx.Conn) error {
			sent, expired, err := RedriveStuck(ctx, conn, opts)
			redriven.WithLabelValues("sent").Add(float64(sent))
			redriven.WithLabelValues("expired").Add(float64(expired))
			if sent+expired > 0 {
				log.Warn("re-drove stuck notifications", "sent", sent, "expired", expired)
			}
			return err
		},
	}
}

// RedriveStuck re-drives every stuck notification, a batch per transaction, and returns
// how many it sent again and how many it settled as expired.
func RedriveStuck(ctx context.Context, conn *pgx.Conn, opts RedriveOptions) (sent, expired int, err error) {
	for {
		s, e, err := redriveBatch(ctx, conn, opts)
		sent, expired = sent+s, expired+e
		if err != nil || s+e < opts.Batch {
			return sent, expired, err
		}
	}
}

func redriveBatch(ctx context.Context, conn *pgx.Conn, opts RedriveOptions) (sent, expired int, err error) {
	staleRetry := (opts.After + opts.MaxRetryDelay).Seconds()
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, stuckSQL, opts.After.Seconds(), staleRetry, opts.Batch)
		if err != nil {
			return fmt.Errorf("find stuck notifications: %w", err)
		}
		var ids []uuid.UUID
		var past []bool
		var id uuid.UUID
		var isPast bool
		if _, err := pgx.ForEachRow(rows, []any{&id, &isPast}, func() error {
			ids, past = append(ids, id), append(past, isPast)
			return nil
		}); err != nil {
			return fmt.Errorf("find stuck notifications: %w", err)
		}
		if len(ids) == 0 {
			return nil
		}
		if _, err := tx.Exec(ctx, settleStaleRetriesSQL, ids, past, staleRetry); err != nil {
			return fmt.Errorf("settle stale retries: %w", err)
		}
		var expiredIDs []uuid.UUID
		for i, id := range ids {
			if past[i] {
				expiredIDs = append(expiredIDs, id)
			}
		}
		if _, err := tx.Exec(ctx, redriveSetSQL, ids, expiredIDs); err != nil {
			return fmt.Errorf("set status: %w", err)
		}
		for i, id := range ids {
			if past[i] {
				expired++
				continue
			}
			if err := outbox.EnqueueSend(ctx, tx, id, outbox.CauseRedrive); err != nil {
				return err
			}
			sent++
		}
		return nil
	})
	if err != nil {
		return 0, 0, err
	}
	return sent, expired, nil
}
