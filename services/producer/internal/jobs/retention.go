package jobs

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"

	"notify/pkg/schema"
)

// RetentionOptions says what the retention job deletes.
type RetentionOptions struct {
	// After (NOTIFICATION_RETENTION) is the age past which rows are deleted.
	After time.Duration
	// Batch is the most rows one statement deletes (and notifications one round handles).
	Batch int
}

// Tables the retention job deletes from, as the metric labels them.
const (
	tableNotifications = "notifications"
	tableDeliveries    = "deliveries"
	tableReplays       = "replays"
	tableDeadLetters   = "dead_letters"
)

// Retention returns the job that deletes notifications, their deliveries and replays, and
// dead letters older than opts.After (see DeleteExpired).
func Retention(opts RetentionOptions, interval time.Duration, log *slog.Logger, reg prometheus.Registerer) Job {
	deleted := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "notify_retention_deleted_rows_total", Help: "Rows deleted by the retention job (NOTIFICATION_RETENTION), by table.",
	}, []string{"table"})
	for _, t := range []string{tableNotifications, tableDeliveries, tableReplays, tableDeadLetters} {
		deleted.WithLabelValues(t)
	}
	reg.MustRegister(deleted)
	return Job{
		Name:     "retention",
		LockKey:  RetentionLockKey,
		Interval: interval,
		Run: func(ctx context.Context, conn *pgx.Conn) error {
			d, err := DeleteExpired(ctx, conn, opts)
			// Counted even when a later statement failed: what was deleted is gone.
			deleted.WithLabelValues(tableNotifications).Add(float64(d.Notifications))
			deleted.WithLabelValues(tableDeliveries).Add(float64(d.Deliveries))
			deleted.WithLabelValues(tableReplays).Add(float64(d.Replays))
			deleted.WithLabelValues(tableDeadLetters).Add(float64(d.DeadLetters))
			if d != (Deleted{}) {
				log.Info("deleted old notifications", "notifications", d.Notifications, "deliveries", d.Deliveries,
					"replays", d.Replays, "dead_letters", d.DeadLetters, "retention", opts.After)
			}
			return err
		},
	}
}

// Deleted counts the rows DeleteExpired deleted, by table.
type Deleted struct {
	Notifications, Deliveries, Replays, DeadLetters int64
}

// expiredNotificationsSQL is the next batch of notifications to delete, in (created_at, id)
// order after a cursor: final, created before the cutoff, and past their TTL. The TTL
// matters only when NOTIFICATION_RETENTION is shorter than the longest TTL (28 days): a
// FAILED notification can be replayed until its TTL passes, and replay needs its
// deliveries. After the TTL nothing changes a final notification any more, so the
// statements below, each its own short transaction, cannot race with a writer. Served by
// the notifications_retention index (its predicate is schema.FinalStatuses).
//
// Cancelled notifications are final too, but the index predates them: they come from a
// second scan, on notifications_status_created_few, merged in the same order.
const expiredNotificationsSQL = `
SELECT id, created_at FROM (
	(SELECT id, created_at FROM notifications
	WHERE status IN ` + schema.FinalStatuses + `
	  AND created_at < $1 AND expires_at <= now()
	  AND (created_at, id) > ($2, $3)
	ORDER BY created_at, id
	LIMIT $4)
	UNION ALL
	(SELECT id, created_at FROM notifications
	WHERE status = '` + schema.StatusCancelled + `'
	  AND created_at < $1 AND expires_at <= now()
	  AND (created_at, id) > ($2, $3)
	ORDER BY created_at, id
	LIMIT $4)
) x
ORDER BY created_at, id
LIMIT $4`

// The children of a batch of notifications go first, at most $2 rows per statement: a
// broadcast has a delivery per token, and deleting its notification row alone would
// cascade to all of them in one statement.
const (
	deleteDeliveriesSQL = `
DELETE FROM deliveries d USING (
	SELECT notification_id, token FROM deliveries WHERE notification_id = ANY($1) LIMIT $2
) x WHERE d.notification_id = x.notification_id AND d.token = x.token`
	deleteReplaysSQL = `
DELETE FROM replays WHERE id IN (SELECT id FROM replays WHERE notification_id = ANY($1) LIMIT $2)`
	deleteNotificationsSQL = `
DELETE FROM notifications WHERE id = ANY($1) AND ` + expiredSQL
	// A batch's notifications are deleted in one transaction with whatever deliveries they
	// still have. Deliveries have no foreign key (migration 0017_a): the notifications are
	// locked first, by a statement of their own, so that the deliveries' delete reads a
	// snapshot taken after any record that held them (delivery.Store.RecordMany locks a
	// notification before writing its deliveries, and writes none for one that is gone).
	lockExpiredSQL = `
SELECT 1 FROM notifications WHERE id = ANY($1) AND ` + expiredSQL + ` ORDER BY id FOR UPDATE`
	deleteLeftDeliveriesSQL = `
DELETE FROM deliveries WHERE notification_id IN (SELECT id FROM notifications WHERE id = ANY($1) AND ` + expiredSQL + `)`
	expiredSQL = `expires_at <= now() AND (status IN ` + schema.FinalStatuses + ` OR status = '` + schema.StatusCancelled + `')`
)

// deleteDeadLettersSQL deletes the next batch of dead letters created before the cutoff
// whose notification is not kept: it has none (a poison message without an id), or its
// notification no longer exists (deleted by this job, or an id that never existed). A dead
// letter of a kept notification stays as long as it does: it says why the notification
// failed and is what replay by filter selects. One not alerted yet stays too: Slack being
// down delays alerts, never loses them.
const deleteDeadLettersSQL = `
WITH batch AS (
	SELECT id FROM dead_letters dl
	WHERE created_at < $1 AND alerted_at IS NOT NULL
	  AND (notification_id IS NULL OR NOT EXISTS (SELECT 1 FROM notifications n WHERE n.id = dl.notification_id))
	  AND (created_at, id) > ($2, $3)
	ORDER BY created_at, id
	LIMIT $4
)
DELETE FROM dead_letters d USING batch WHERE d.id = batch.id
RETURNING d.created_at, d.id`

// DeleteExpired deletes what is older than opts.After: final notifications past their TTL
// with their deliveries and replays, then dead letters whose notification is gone (see
// deleteDeadLettersSQL). A notification that is not final (pending, retrying, or scheduled
// later) is never touched, whatever its age. Every statement deletes at most opts.Batch
// rows in its own transaction, so no lock is held for long and the job can stop anywhere;
// a walk in (created_at, id) order reads each row it keeps once per run.
func DeleteExpired(ctx context.Context, conn *pgx.Conn, opts RetentionOptions) (Deleted, error) {
	var d Deleted
	var cutoff time.Time
	if err := conn.QueryRow(ctx, "SELECT now() - make_interval(secs => $1)", opts.After.Seconds()).Scan(&cutoff); err != nil {
		return d, fmt.Errorf("retention cutoff: %w", err)
	}
	// Nothing was created before 1970: the walks start there.
	afterAt, afterID := time.Unix(0, 0), uuid.Nil
	for {
		rows, err := conn.Query(ctx, expiredNotificationsSQL, cutoff, afterAt, afterID, opts.Batch)
		if err != nil {
			return d, fmt.Errorf("select expired notifications: %w", err)
		}
		var ids []uuid.UUID
		_, err = pgx.ForEachRow(rows, []any{&afterID, &afterAt}, func() error {
			ids = append(ids, afterID)
			return nil
		})
		if err != nil {
			return d, fmt.Errorf("select expired notifications: %w", err)
		}
		if len(ids) == 0 {
			break
		}
		for _, child := range []struct {
			sql string
			n   *int64
		}{{deleteDeliveriesSQL, &d.Deliveries}, {deleteReplaysSQL, &d.Replays}} {
			for {
				tag, err := conn.Exec(ctx, child.sql, ids, opts.Batch)
				if err != nil {
					return d, fmt.Errorf("delete children of expired notifications: %w", err)
				}
				*child.n += tag.RowsAffected()
				if tag.RowsAffected() < int64(opts.Batch) {
					break
				}
			}
		}
		var deliveries, notifications int64
		b := &pgx.Batch{} // one implicit transaction
		b.Queue(lockExpiredSQL, ids)
		b.Queue(deleteLeftDeliveriesSQL, ids).Exec(func(tag pgconn.CommandTag) error {
			deliveries = tag.RowsAffected()
			return nil
		})
		b.Queue(deleteNotificationsSQL, ids).Exec(func(tag pgconn.CommandTag) error {
			notifications = tag.RowsAffected()
			return nil
		})
		if err := conn.SendBatch(ctx, b).Close(); err != nil {
			return d, fmt.Errorf("delete expired notifications: %w", err)
		}
		d.Deliveries += deliveries
		d.Notifications += notifications
		if len(ids) < opts.Batch {
			break
		}
	}

	var afterDL int64
	afterAt = time.Unix(0, 0)
	for {
		rows, err := conn.Query(ctx, deleteDeadLettersSQL, cutoff, afterAt, afterDL, opts.Batch)
		if err != nil {
			return d, fmt.Errorf("delete old dead letters: %w", err)
		}
		var at time.Time
		var id, n int64
		_, err = pgx.ForEachRow(rows, []any{&at, &id}, func() error {
			// RETURNING comes in no particular order; the cursor is the largest key.
			if at.After(afterAt) || (at.Equal(afterAt) && id > afterDL) {
				afterAt, afterDL = at, id
			}
			n++
			return nil
		})
		d.DeadLetters += n
		if err != nil {
			return d, fmt.Errorf("delete old dead letters: %w", err)
		}
		if n < int64(opts.Batch) {
			return d, nil
		}
	}
}
