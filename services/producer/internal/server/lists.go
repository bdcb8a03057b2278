package server

import (
	"context"
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/types/known/timestamppb"

	notifyv1 "notify/proto/gen/notify/v1"
)

// Limits of the admin listings.
const (
	MaxListPageSize = 1000
	maxReasonLen    = 64
)

// cursor is a keyset position in a newest-first listing: the (created_at, id) of the
// last row a page returned. The next page starts strictly after it, so rows inserted
// meanwhile never shift a page.
type cursor struct {
	at time.Time
	id string
}

func (c cursor) String() string {
	return base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(c.at.UnixMicro(), 10) + "/" + c.id))
}

// parseCursor decodes a page token; ok is false for an empty one.
func parseCursor(token string) (c cursor, ok bool, err error) {
	if token == "" {
		return cursor{}, false, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil {
		return cursor{}, false, err
	}
	digits, id, found := strings.Cut(string(b), "/")
	micros, err := strconv.ParseInt(digits, 10, 64)
	// The id is compared in SQL (a device id is text): bytes PostgreSQL cannot compare as
	// text (NUL, not UTF-8) come from no token of ours.
	if !found || err != nil || id == "" || !goodText(id) {
		return cursor{}, false, fmt.Errorf("malformed page token")
	}
	// A token we issued holds a row's created_at. Any int64 of microseconds decodes, but one
	// outside the years 1 to 9999 would reach PostgreSQL as "timestamp out of range" and
	// answer a garbage token with INTERNAL.
	at := time.UnixMicro(micros)
	if err := timestamppb.New(at).CheckValid(); err != nil {
		return cursor{}, false, fmt.Errorf("malformed page token: %w", err)
	}
	return cursor{at: at, id: id}, true, nil
}

// conditions builds a WHERE clause from the filters a request sets, numbering the
// placeholders. Only set filters become predicates, so each query the planner sees can use
// the index that fits it (catch-all predicates like "$1 IS NULL OR status = $1" defeat
// generic plans).
type conditions struct {
	preds []string
	args  []any
}

// add appends pred, whose "?"s are replaced by placeholders for args in order.
func (c *conditions) add(pred string, args ...any) {
	var b strings.Builder
	for _, r := range pred {
		if r == '?' && len(args) > 0 {
			c.args = append(c.args, args[0])
			args = args[1:]
			b.WriteString("$" + strconv.Itoa(len(c.args)))
			continue
		}
		b.WriteRune(r)
	}
	c.preds = append(c.preds, b.String())
}

// addStatus appends "status = name" with name as a literal, not a placeholder: the indexes
// that serve the listing of a status are partial (migration 0017_b), and only a constant
// lets the planner prove their predicates, in a generic plan too. name is one of
// statusNames' keys, never the caller's text.
func (c *conditions) addStatus(name string) {
	c.preds = append(c.preds, "status = '"+name+"'")
}

func (c *conditions) where() string {
	if len(c.preds) == 0 {
		return ""
	}
	return " WHERE " + strings.Join(c.preds, " AND ")
}

// next returns the placeholder for one more argument.
func (c *conditions) next(arg any) string {
	c.args = append(c.args, arg)
	return "$" + strconv.Itoa(len(c.args))
}

// timeRange validates an optional [start, end) range.
func timeRange(v *violations, prefix string, start, end *timestamppb.Timestamp) (from, to *time.Time) {
	if start != nil {
		if err := start.CheckValid(); err != nil {
			v.add(prefix+"start_time", "is not a valid time")
		} else {
			t := start.AsTime()
			from = &t
		}
	}
	if end != nil {
		if err := end.CheckValid(); err != nil {
			v.add(prefix+"end_time", "is not a valid time")
		} else {
			t := end.AsTime()
			to = &t
		}
	}
	if from != nil && to != nil && !from.Before(*to) {
		v.add(prefix+"end_time", "must be after start_time")
	}
	return from, to
}

func statusName(s notifyv1.NotificationStatus) (string, bool) {
	for name, v := range statusNames {
		if v == s {
			return name, true
		}
	}
	return "", false
}

// listNotificationsSQL is ListNotifications' query: the notifications where selects, newest
// first, at most limit.
func listNotificationsSQL(where *conditions, limit int) string {
	return `
		SELECT id, caller, coalesce(idempotency_key, ''), type, status, created_at, updated_at, expires_at,
			total, delivered, invalid, retrying, failed, expired, skipped, cancelled, replay_count,
			send_at, cancelled_at, coalesce(cancelled_by, ''), app
		FROM notifications` + where.where() + `
		ORDER BY created_at DESC, id DESC LIMIT ` + where.next(limit)
}

// ListNotifications lists notifications newest first (keyset pagination on created_at, id).
func (a *Admin) ListNotifications(ctx context.Context, req *notifyv1.ListNotificationsRequest) (*notifyv1.ListNotificationsResponse, error) {
	var v violations
	var where conditions
	if s := req.GetStatus(); s != notifyv1.NotificationStatus_NOTIFICATION_STATUS_UNSPECIFIED {
		name, ok := statusName(s)
		if !ok {
			v.add("status", "is %d, not a known status", s)
		}
		where.addStatus(name)
	}
	if t := req.GetType(); t != "" {
		if len(t) > MaxTypeLen {
			v.add("type", "must be at most %d characters", MaxTypeLen)
		}
		where.add("type = ?", t)
	}
	from, to := timeRange(&v, "", req.GetStartTime(), req.GetEndTime())
	after, paged, err := parseCursor(req.GetPageToken())
	var afterID uuid.UUID
	if err == nil && paged {
		afterID, err = uuid.Parse(after.id)
	}
	if err != nil {
		v.add("page_token", "is not a token from a previous response")
	}
	if len(v) > 0 {
		return nil, invalidArgument(v)
	}
	if from != nil {
		where.add("created_at >= ?", *from)
	}
	if to != nil {
		where.add("created_at < ?", *to)
	}
	if paged {
		where.add("(created_at, id) < (?, ?)", after.at, afterID)
	}
	limit := pageSize(req.GetPageSize(), 50, MaxListPageSize)
	rows, err := a.pool.Query(ctx, listNotificationsSQL(&where, limit+1), where.args...)
	if err != nil {
		return nil, toStatus(ctx, a.log, "list notifications", err)
	}
	var list []*notifyv1.Notification
	var (
		id                   uuid.UUID
		n                    notifyv1.Notification
		c                    notifyv1.DeliveryCounts
		st                   string
		created, updated, ex time.Time
		sendAt, cancelledAt  *time.Time
	)
	_, err = pgx.ForEachRow(rows, []any{&id, &n.Caller, &n.IdempotencyKey, &n.Type, &st, &created, &updated, &ex,
		&c.Total, &c.Delivered, &c.Invalid, &c.Retrying, &c.Failed, &c.Expired, &c.Skipped, &c.Cancelled, &n.ReplayCount,
		&sendAt, &cancelledAt, &n.CancelledBy, &n.App}, func() error {
		list = append(list, &notifyv1.Notification{
			Id: id.String(), Caller: n.Caller, IdempotencyKey: n.IdempotencyKey, Type: n.Type, Status: statusNames[st],
			Counts: &notifyv1.DeliveryCounts{
				Total: c.Total, Delivered: c.Delivered, Invalid: c.Invalid, Retrying: c.Retrying, Failed: c.Failed,
				Expired: c.Expired, Skipped: c.Skipped, Cancelled: c.Cancelled,
				Pending: max(0, c.Total-c.Delivered-c.Invalid-c.Retrying-c.Failed-c.Expired-c.Skipped-c.Cancelled),
			},
			CreateTime: timestamppb.New(created), UpdateTime: timestamppb.New(updated), ExpireTime: timestamppb.New(ex),
			ReplayCount: n.ReplayCount, SendTime: optionalTime(sendAt), CancelTime: optionalTime(cancelledAt),
			CancelledBy: n.CancelledBy, App: n.App,
		})
		return nil
	})
	if err != nil {
		return nil, toStatus(ctx, a.log, "list notifications", err)
	}
	resp := &notifyv1.ListNotificationsResponse{}
	if len(list) > limit {
		list = list[:limit]
		last := list[limit-1]
		resp.NextPageToken = cursor{at: last.GetCreateTime().AsTime(), id: last.GetId()}.String()
	}
	resp.Notifications = list
	return resp, nil
}

// validateDeadLetterFilter checks a filter and adds its predicates to where.
func validateDeadLetterFilter(v *violations, where *conditions, prefix string, f *notifyv1.DeadLetterFilter) {
	if r := f.GetReason(); r != "" {
		if len(r) > maxReasonLen {
			v.add(prefix+"reason", "must be at most %d characters", maxReasonLen)
		}
		where.add("reason = ?", r)
	}
	from, to := timeRange(v, prefix, f.GetStartTime(), f.GetEndTime())
	if from != nil {
		where.add("created_at >= ?", *from)
	}
	if to != nil {
		where.add("created_at < ?", *to)
	}
	if f != nil && f.Replayed != nil {
		if f.GetReplayed() {
			where.add("replayed_at IS NOT NULL")
		} else {
			where.add("replayed_at IS NULL")
		}
	}
}

// ListDeadLetters lists dead letters newest first (keyset pagination on created_at, id).
func (a *Admin) ListDeadLetters(ctx context.Context, req *notifyv1.ListDeadLettersRequest) (*notifyv1.ListDeadLettersResponse, error) {
	var v violations
	var where conditions
	validateDeadLetterFilter(&v, &where, "filter.", req.GetFilter())
	after, paged, err := parseCursor(req.GetPageToken())
	var afterID int64
	if err == nil && paged {
		afterID, err = strconv.ParseInt(after.id, 10, 64)
	}
	if err != nil {
		v.add("page_token", "is not a token from a previous response")
	}
	if len(v) > 0 {
		return nil, invalidArgument(v)
	}
	if paged {
		where.add("(created_at, id) < (?, ?)", after.at, afterID)
	}
	limit := pageSize(req.GetPageSize(), 50, MaxListPageSize)
	rows, err := a.pool.Query(ctx, `
		SELECT id, coalesce(notification_id::text, ''), reason, coalesce(error_code, ''), coalesce(error_message, ''),
			attempts, token_count, created_at, alerted_at, replayed_at, coalesce(replayed_by, '')
		FROM dead_letters`+where.where()+`
		ORDER BY created_at DESC, id DESC LIMIT `+where.next(limit+1), where.args...)
	if err != nil {
		return nil, toStatus(ctx, a.log, "list dead letters", err)
	}
	var list []*notifyv1.DeadLetter
	var (
		d                 notifyv1.DeadLetter
		created           time.Time
		alerted, replayed *time.Time
	)
	_, err = pgx.ForEachRow(rows, []any{&d.Id, &d.NotificationId, &d.Reason, &d.ErrorCode, &d.ErrorMessage,
		&d.Attempts, &d.TokenCount, &created, &alerted, &replayed, &d.ReplayedBy}, func() error {
		dl := &notifyv1.DeadLetter{
			Id: d.Id, NotificationId: d.NotificationId, Reason: d.Reason, ErrorCode: d.ErrorCode, ErrorMessage: d.ErrorMessage,
			Attempts: d.Attempts, TokenCount: d.TokenCount, CreateTime: timestamppb.New(created), ReplayedBy: d.ReplayedBy,
		}
		if alerted != nil {
			dl.AlertTime = timestamppb.New(*alerted)
		}
		if replayed != nil {
			dl.ReplayTime = timestamppb.New(*replayed)
		}
		list = append(list, dl)
		return nil
	})
	if err != nil {
		return nil, toStatus(ctx, a.log, "list dead letters", err)
	}
	resp := &notifyv1.ListDeadLettersResponse{}
	if len(list) > limit {
		list = list[:limit]
		last := list[limit-1]
		resp.NextPageToken = cursor{at: last.GetCreateTime().AsTime(), id: strconv.FormatInt(last.GetId(), 10)}.String()
	}
	resp.DeadLetters = list
	return resp, nil
}
