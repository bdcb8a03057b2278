package server

import (
	"context"
	"encoding/base64"
	"errors"
	"log/slog"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"notify/pkg/schema"
	notifyv1 "notify/proto/gen/notify/v1"
	"notify/services/producer/internal/apikey"
)

// Admin implements AdminService.
type Admin struct {
	notifyv1.UnimplementedAdminServiceServer
	pool  *pgxpool.Pool
	log   *slog.Logger
	keys  *apikey.Store
	cache keyCache
	wake  func() // tells the outbox relay replays were committed; may be nil
	apps  Apps
}

// SetApps sets the apps API keys may be limited to (by default only "default"); call it
// before serving.
func (a *Admin) SetApps(apps Apps) { a.apps = apps }

// keyCache is told about revocations so this process refuses a revoked key at once;
// *apikey.Verifier satisfies it.
type keyCache interface {
	Forget(name string)
}

// NewAdmin returns the AdminService. cache and wake (outbox.Relay.Wake, called after
// replays were committed) may be nil.
func NewAdmin(pool *pgxpool.Pool, log *slog.Logger, cache keyCache, wake func()) *Admin {
	return &Admin{pool: pool, log: log, keys: apikey.NewStore(pool), cache: cache, wake: wake}
}

var (
	statusNames = map[string]notifyv1.NotificationStatus{
		schema.StatusScheduled: notifyv1.NotificationStatus_NOTIFICATION_STATUS_SCHEDULED,
		schema.StatusCancelled: notifyv1.NotificationStatus_NOTIFICATION_STATUS_CANCELLED,
		schema.StatusPending:   notifyv1.NotificationStatus_NOTIFICATION_STATUS_PENDING,
		schema.StatusRetrying:  notifyv1.NotificationStatus_NOTIFICATION_STATUS_RETRYING,
		schema.StatusDelivered: notifyv1.NotificationStatus_NOTIFICATION_STATUS_DELIVERED,
		schema.StatusFailed:    notifyv1.NotificationStatus_NOTIFICATION_STATUS_FAILED,
		schema.StatusExpired:   notifyv1.NotificationStatus_NOTIFICATION_STATUS_EXPIRED,
	}
	outcomeNames = map[string]notifyv1.DeliveryOutcome{
		schema.OutcomePending:           notifyv1.DeliveryOutcome_DELIVERY_OUTCOME_PENDING,
		schema.OutcomeDelivered:         notifyv1.DeliveryOutcome_DELIVERY_OUTCOME_DELIVERED,
		schema.OutcomeInvalid:           notifyv1.DeliveryOutcome_DELIVERY_OUTCOME_INVALID,
		schema.OutcomeRetrying:          notifyv1.DeliveryOutcome_DELIVERY_OUTCOME_RETRYING,
		schema.OutcomeFailed:            notifyv1.DeliveryOutcome_DELIVERY_OUTCOME_FAILED,
		schema.OutcomeExpired:           notifyv1.DeliveryOutcome_DELIVERY_OUTCOME_EXPIRED,
		schema.OutcomeSkippedPreference: notifyv1.DeliveryOutcome_DELIVERY_OUTCOME_SKIPPED_PREFERENCE,
		schema.OutcomeCancelled:         notifyv1.DeliveryOutcome_DELIVERY_OUTCOME_CANCELLED,
	}
)

func outcomeName(o notifyv1.DeliveryOutcome) (string, bool) {
	for name, v := range outcomeNames {
		if v == o {
			return name, true
		}
	}
	return "", false
}

// pageSize applies a page size's default and cap.
func pageSize(requested int32, def, max int) int {
	switch {
	case requested <= 0:
		return def
	case int(requested) > max:
		return max
	}
	return int(requested)
}

// GetNotification returns a notification and a page of its deliveries, ordered by token.
func (a *Admin) GetNotification(ctx context.Context, req *notifyv1.GetNotificationRequest) (*notifyv1.GetNotificationResponse, error) {
	var v violations
	id, err := uuid.Parse(req.GetNotificationId())
	if err != nil {
		v.add("notification_id", "must be a notification id (UUID)")
	}
	// The token is the last token of the previous page, compared in SQL: bytes PostgreSQL
	// cannot compare as text (NUL, not UTF-8) come from no response of ours.
	after, err := base64.RawURLEncoding.DecodeString(req.GetPageToken())
	if err != nil || !goodText(string(after)) {
		v.add("page_token", "is not a token from a previous response")
	}
	outcome := ""
	if o := req.GetOutcome(); o != notifyv1.DeliveryOutcome_DELIVERY_OUTCOME_UNSPECIFIED {
		name, ok := outcomeName(o)
		if !ok {
			v.add("outcome", "is %d, not a known outcome", o)
		}
		outcome = name
	}
	if len(v) > 0 {
		return nil, invalidArgument(v)
	}

	n := &notifyv1.Notification{Counts: &notifyv1.DeliveryCounts{}}
	var (
		caller, typ, st      string
		key                  *string
		request              []byte
		created, updated, ex time.Time
		sendAt, cancelledAt  *time.Time
		c                    = n.Counts
	)
	err = a.pool.QueryRow(ctx, `
		SELECT caller, idempotency_key, type, status, request, created_at, updated_at, expires_at,
			total, delivered, invalid, retrying, failed, expired, skipped, cancelled, replay_count,
			send_at, cancelled_at, coalesce(cancelled_by, ''), app
		FROM notifications WHERE id = $1`, id).Scan(&caller, &key, &typ, &st, &request, &created, &updated, &ex,
		&c.Total, &c.Delivered, &c.Invalid, &c.Retrying, &c.Failed, &c.Expired, &c.Skipped, &c.Cancelled, &n.ReplayCount,
		&sendAt, &cancelledAt, &n.CancelledBy, &n.App)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, status.Errorf(codes.NotFound, "notification %s not found", id)
	}
	if err != nil {
		return nil, toStatus(ctx, a.log, "read notification", err, "notification_id", id)
	}
	n.Id, n.Caller, n.Type, n.Status = id.String(), caller, typ, statusNames[st]
	if key != nil {
		n.IdempotencyKey = *key
	}
	c.Pending = max(0, c.Total-c.Delivered-c.Invalid-c.Retrying-c.Failed-c.Expired-c.Skipped-c.Cancelled)
	n.CreateTime, n.UpdateTime, n.ExpireTime = timestamppb.New(created), timestamppb.New(updated), timestamppb.New(ex)
	n.SendTime, n.CancelTime = optionalTime(sendAt), optionalTime(cancelledAt)
	if n.Request, err = schema.DecodeRequest(request); err != nil {
		return nil, toStatus(ctx, a.log, "decode stored request", err, "notification_id", id)
	}

	limit := pageSize(req.GetPageSize(), 100, 1000)
	rows, err := a.pool.Query(ctx, `
		SELECT token, coalesce(device_id, ''), coalesce(user_id, ''), outcome, attempts,
			coalesce(error_code, ''), coalesce(error_message, ''), updated_at
		FROM deliveries
		WHERE notification_id = $1 AND token > $2 AND ($3 = '' OR outcome = $3)
		ORDER BY token LIMIT $4`, id, string(after), outcome, limit+1)
	if err != nil {
		return nil, toStatus(ctx, a.log, "read deliveries", err, "notification_id", id)
	}
	var deliveries []*notifyv1.Delivery
	var d notifyv1.Delivery
	var oc string
	var at time.Time
	_, err = pgx.ForEachRow(rows, []any{&d.Token, &d.DeviceId, &d.UserId, &oc, &d.Attempts, &d.ErrorCode, &d.ErrorMessage, &at}, func() error {
		deliveries = append(deliveries, &notifyv1.Delivery{
			Token: d.Token, DeviceId: d.DeviceId, UserId: d.UserId, Outcome: outcomeNames[oc],
			Attempts: d.Attempts, ErrorCode: d.ErrorCode, ErrorMessage: d.ErrorMessage, UpdateTime: timestamppb.New(at),
			App: n.App, // every token of a notification is sent through its one app
		})
		return nil
	})
	if err != nil {
		return nil, toStatus(ctx, a.log, "read deliveries", err, "notification_id", id)
	}
	resp := &notifyv1.GetNotificationResponse{Notification: n}
	if len(deliveries) > limit {
		deliveries = deliveries[:limit]
		resp.NextPageToken = base64.RawURLEncoding.EncodeToString([]byte(deliveries[limit-1].Token))
	}
	resp.Deliveries = deliveries
	return resp, nil
}

// optionalTime is t as a Timestamp, nil for a NULL column.
func optionalTime(t *time.Time) *timestamppb.Timestamp {
	if t == nil {
		return nil
	}
	return timestamppb.New(*t)
}
