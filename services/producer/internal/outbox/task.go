package outbox

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5/pgconn"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	busv1 "notify/proto/gen/notify/bus/v1"
)

// SendRoutingKey is where SendTasks go: the sender's queue.
const SendRoutingKey = "send"

// Causes of a SendTask.
const (
	CauseReplay  = "replay"
	CauseRedrive = "redrive"
)

// NotifyChannel is the PostgreSQL notification channel that wakes every replica's relay.
// Publish does not use it: a NOTIFY in every Publish transaction serialised all commits on
// PostgreSQL's notification lock, so Publish wakes its own process's relay instead.
const NotifyChannel = "notify_outbox"

// execer is what EnqueueSend needs: a transaction, a connection or a pool.
type execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// EnqueueSend writes an outbox row asking the sender to deliver the notification again,
// and a NOTIFY on NotifyChannel that wakes the relays when the transaction commits. Call it
// in the transaction that sets the notification back to pending: the sender ignores a task
// for a notification whose status is final.
func EnqueueSend(ctx context.Context, db execer, notificationID, cause string) error {
	task := &busv1.SendTask{NotificationId: notificationID, Cause: cause, EnqueueTime: timestamppb.Now()}
	body, err := proto.Marshal(task)
	if err != nil {
		return fmt.Errorf("encode send task: %w", err)
	}
	_, err = db.Exec(ctx, `WITH o AS (
			INSERT INTO outbox (notification_id, routing_key, message_type, body) VALUES ($1, $2, $3, $4)
		) SELECT pg_notify($5, '')`,
		notificationID, SendRoutingKey, string(task.ProtoReflect().Descriptor().FullName()), body, NotifyChannel)
	if err != nil {
		return fmt.Errorf("enqueue send task for %s: %w", notificationID, err)
	}
	return nil
}
