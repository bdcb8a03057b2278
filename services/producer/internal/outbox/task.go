package outbox

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgconn"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"notify/pkg/rabbit"
	"notify/pkg/tracing"
	busv1 "notify/proto/gen/notify/bus/v1"
	notifyv1 "notify/proto/gen/notify/v1"
)

// Causes of a SendTask: why the sender is asked to deliver a notification.
const (
	CausePublish = "publish" // accepted by Publish
	CauseReplay  = "replay"  // AdminService.Replay
	CauseRedrive = "redrive" // the stuck-notification re-drive job
)

// NotifyChannel is the PostgreSQL notification channel that wakes every replica's relay.
// Publish does not use it: a NOTIFY in every Publish transaction serialised all commits on
// PostgreSQL's notification lock, so Publish wakes its own process's relay instead.
const NotifyChannel = "notify_outbox"

// Row is an outbox row before it is written: the relay publishes Body, of protobuf type
// MessageType, with RoutingKey.
type Row struct {
	NotificationID uuid.UUID
	RoutingKey     string
	MessageType    string
	Body           []byte
	// Traceparent is the W3C trace context of the call that wrote the row ("" untraced):
	// the relay publishes the row in that trace.
	Traceparent string
}

// SendTask returns the outbox row asking the sender to deliver notification id: a
// notify.bus.v1.SendTask on the send queue's routing key. Publish (PublishTask), replays
// and re-drives all build it here.
func SendTask(id uuid.UUID, cause string, at time.Time) (Row, error) {
	return sendTask(id, &busv1.SendTask{NotificationId: id.String(), Cause: cause, EnqueueTime: timestamppb.New(at)})
}

// MaxTaskRequest is the largest request (in binary protobuf) of which a SendTask carries a
// copy: a small notification's, whose whole audience the sender's first page holds.
const MaxTaskRequest = 4 << 10

// PublishTask is the SendTask of a notification Publish accepted with req: it carries a
// copy of req, when req is at most MaxTaskRequest, so that the sender reads the audience's
// first page in the round trip that loads the notification (SendTask.request).
func PublishTask(id uuid.UUID, req *notifyv1.PublishRequest, at time.Time) (Row, error) {
	task := &busv1.SendTask{NotificationId: id.String(), Cause: CausePublish, EnqueueTime: timestamppb.New(at)}
	if proto.Size(req) <= MaxTaskRequest {
		task.Request = req
	}
	return sendTask(id, task)
}

func sendTask(id uuid.UUID, task *busv1.SendTask) (Row, error) {
	body, err := proto.Marshal(task)
	if err != nil {
		return Row{}, fmt.Errorf("encode send task for %s: %w", id, err)
	}
	return Row{
		NotificationID: id,
		RoutingKey:     rabbit.SendKey,
		MessageType:    string(task.ProtoReflect().Descriptor().FullName()),
		Body:           body,
	}, nil
}

// execer is what EnqueueSend needs: a transaction, a connection or a pool.
type execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// EnqueueSend writes the SendTask row for notification id, and a NOTIFY on NotifyChannel
// that wakes the relays when the transaction commits. Call it in the transaction that sets
// the notification back to pending: the sender ignores a task for a notification whose
// status is final.
//
// The row belongs to ctx's trace (a replay's); without one, to the notification's original
// trace (a re-drive continues the Publish's), if it was traced.
func EnqueueSend(ctx context.Context, db execer, id uuid.UUID, cause string) error {
	row, err := SendTask(id, cause, time.Now())
	if err != nil {
		return err
	}
	var traceparent *string
	if tp := tracing.Traceparent(ctx); tp != "" {
		traceparent = &tp
	}
	_, err = db.Exec(ctx, `WITH o AS (
			INSERT INTO outbox (notification_id, routing_key, message_type, body, traceparent)
			VALUES ($1, $2, $3, $4, coalesce($6, (SELECT traceparent FROM notifications WHERE id = $1)))
		) SELECT pg_notify($5, '')`,
		row.NotificationID, row.RoutingKey, row.MessageType, row.Body, NotifyChannel, traceparent)
	if err != nil {
		return fmt.Errorf("enqueue send task for %s: %w", id, err)
	}
	return nil
}
