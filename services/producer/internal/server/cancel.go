package server

import (
	"context"
	"errors"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"notify/pkg/schema"
	notifyv1 "notify/proto/gen/notify/v1"
)

// errNotCancellable, errNoNotification and errNotPublisher are Cancel's refusals that carry
// their own message.
var (
	errNotCancellable = errors.New("not cancellable")
	errNoNotification = errors.New("no such notification")
	errNotPublisher   = errors.New("published by another API key")
)

// cancelSQL reads the notification to cancel with its row lock: the sender's status
// writes and the relay's "scheduled → pending" wait for the cancel, and then see it.
const cancelSQL = `SELECT caller, status, delivered + invalid + retrying + failed FROM notifications WHERE id = $1 FOR UPDATE`

// cancelRetriesSQL settles the tokens of notification $1 that wait for a retry as
// cancelled (their retry task, when it arrives, finds nothing to send) and moves the counts
// with them, before the status change, so that the CANCELLED event has the final counts.
// Their last transient FCM error is cleared: a cancelled token carries no error, as when the
// retrier settles it (an UNAVAILABLE beside CANCELLED read as if the cancel had failed).
// The partial index deliveries_notification_undelivered serves the UPDATE.
const cancelRetriesSQL = `
WITH moved AS (
	UPDATE deliveries SET outcome = '` + schema.OutcomeCancelled + `', error_code = NULL, error_message = NULL, updated_at = now()
	WHERE notification_id = $1 AND outcome = '` + schema.OutcomeRetrying + `'
	RETURNING 1
)
UPDATE notifications SET retrying = retrying - (SELECT count(*) FROM moved), cancelled = cancelled + (SELECT count(*) FROM moved)
WHERE id = $1
RETURNING (SELECT count(*) FROM moved)`

// cancelSetSQL cancels notification $1 for caller $2, with its status event.
var cancelSetSQL = schema.ChangeStatusSQL("'"+schema.StatusCancelled+"'",
	", cancelled_at = now(), cancelled_by = $2, updated_at = now()", "n.id = $1")

// Cancel stops a scheduled, pending or retrying notification (see the proto). In one
// transaction it settles the tokens waiting for a retry as cancelled, sets the status
// CANCELLED and deletes the scheduled send task if no relay holds it; a task that is
// relayed anyway finds the notification final and is acknowledged unsent, and a retry task
// finds its tokens settled.
func (s *Notifications) Cancel(ctx context.Context, req *notifyv1.CancelRequest) (*notifyv1.CancelResponse, error) {
	id, err := uuid.Parse(req.GetNotificationId())
	if err != nil {
		var v violations
		v.add("notification_id", "must be a notification id (UUID)")
		return nil, invalidArgument(v)
	}
	caller := Caller(ctx)
	var (
		owner, st      string
		sent, retrying int64
	)
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, cancelSQL, id).Scan(&owner, &st, &sent)
		if errors.Is(err, pgx.ErrNoRows) {
			return errNoNotification
		}
		if err != nil {
			return fmt.Errorf("read notification: %w", err)
		}
		if owner != caller && !IsAdmin(ctx) {
			return errNotPublisher
		}
		if st != schema.StatusScheduled && !schema.InFlight(st) {
			return errNotCancellable
		}
		if err := tx.QueryRow(ctx, cancelRetriesSQL, id).Scan(&retrying); err != nil {
			return fmt.Errorf("cancel retries: %w", err)
		}
		if _, err := tx.Exec(ctx, cancelSetSQL, id, caller); err != nil {
			return fmt.Errorf("cancel: %w", err)
		}
		// SKIP LOCKED: a relay that claimed the row is publishing it; waiting for it would
		// deadlock (it waits for this row lock to set the notification pending).
		if _, err := tx.Exec(ctx, `DELETE FROM outbox WHERE id IN (
				SELECT id FROM outbox WHERE notification_id = $1 AND published_at IS NULL AND due_at IS NOT NULL
				FOR UPDATE SKIP LOCKED)`, id); err != nil {
			return fmt.Errorf("delete scheduled send task: %w", err)
		}
		return nil
	})
	switch {
	case errors.Is(err, errNoNotification):
		return nil, status.Errorf(codes.NotFound, "notification %s not found", id)
	case errors.Is(err, errNotPublisher):
		// The key's role allows Cancel; the notification is not its own. Who published it is
		// not the caller's business.
		s.log.InfoContext(ctx, "call refused: not the publisher", "key", caller, "notification_id", id, "publisher", owner)
		return nil, status.Errorf(codes.PermissionDenied,
			"notification %s was published by another API key; only its publisher or an admin key may cancel it", id)
	case errors.Is(err, errNotCancellable):
		return nil, status.Errorf(codes.FailedPrecondition,
			"notification %s is %s; only a scheduled, pending or retrying notification can be cancelled", id, st)
	case err != nil:
		return nil, toStatus(ctx, s.log, "cancel notification", err, "notification_id", id, "caller", caller)
	}
	s.log.InfoContext(ctx, "notification cancelled", "notification_id", id, "caller", caller, "was", st, "sent", sent,
		"retry_cancelled", retrying)
	return &notifyv1.CancelResponse{Sent: sent, RetryCancelled: retrying}, nil
}
