package server

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"notify/pkg/schema"
	busv1 "notify/proto/gen/notify/bus/v1"
	notifyv1 "notify/proto/gen/notify/v1"
	"notify/services/producer/internal/apikey"
)

// TestPublishScheduled: a send_at in the future stores the notification SCHEDULED with a
// send task due then and its TTL counted from then; one in the past is sent at once; one
// more than 30 days ahead is refused and nothing is written.
func TestPublishScheduled(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := WithCaller(context.Background(), "orders")
	at := time.Now().Add(time.Hour).Truncate(time.Microsecond)

	req := validRequest()
	req.Options = &notifyv1.Options{SendAt: timestamppb.New(at), Ttl: durationpb.New(10 * time.Minute)}
	resp, err := f.pub.Publish(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	var (
		st              string
		sendAt, expires time.Time
		due             *time.Time
	)
	if err := f.db.Pool.QueryRow(ctx, `SELECT n.status, n.send_at, n.expires_at, o.due_at FROM notifications n
		JOIN outbox o ON o.notification_id = n.id WHERE n.id = $1`, resp.GetNotificationId()).Scan(&st, &sendAt, &expires, &due); err != nil {
		t.Fatal(err)
	}
	if st != schema.StatusScheduled || !sendAt.Equal(at) || due == nil || !due.Equal(at) || !expires.Equal(at.Add(10*time.Minute)) {
		t.Errorf("stored status %s, send_at %v, due %v, expires %v; want scheduled, %v, %v, %v",
			st, sendAt, due, expires, at, at, at.Add(10*time.Minute))
	}
	got, err := f.admin.GetNotification(ctxOps, &notifyv1.GetNotificationRequest{NotificationId: resp.GetNotificationId()})
	if err != nil {
		t.Fatal(err)
	}
	if n := got.GetNotification(); n.GetStatus() != notifyv1.NotificationStatus_NOTIFICATION_STATUS_SCHEDULED || !n.GetSendTime().AsTime().Equal(at) {
		t.Errorf("GetNotification = %v, send time %v; want SCHEDULED at %v", n.GetStatus(), n.GetSendTime().AsTime(), at)
	}

	req.Options.SendAt = timestamppb.New(time.Now().Add(-time.Minute))
	resp, err = f.pub.Publish(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.db.Pool.QueryRow(ctx, `SELECT n.status, o.due_at FROM notifications n
		JOIN outbox o ON o.notification_id = n.id WHERE n.id = $1`, resp.GetNotificationId()).Scan(&st, &due); err != nil {
		t.Fatal(err)
	}
	if st != schema.StatusPending || due != nil {
		t.Errorf("send_at in the past: status %s, due %v; want pending, due at once", st, due)
	}

	before := f.count(t)
	for _, at := range []*timestamppb.Timestamp{
		timestamppb.New(time.Now().Add(31 * 24 * time.Hour)),
		{Seconds: 1, Nanos: -1},
	} {
		req.Options.SendAt = at
		_, err := f.pub.Publish(ctx, req)
		if diff := cmp.Diff([]string{"options.send_at"}, badFields(t, err)); diff != "" {
			t.Errorf("send_at %v: fields (-want +got):\n%s", at, diff)
		}
	}
	if n := f.count(t); n != before {
		t.Errorf("refused Publish calls wrote %d rows", n-before)
	}
}

// count is the number of notification and outbox rows.
func (f *fixture) count(t *testing.T) int {
	t.Helper()
	var n int
	if err := f.db.Pool.QueryRow(context.Background(), "SELECT (SELECT count(*) FROM notifications) + (SELECT count(*) FROM outbox WHERE message_type <> 'notify.bus.v1.StatusEvent')").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestCancel(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	orders := WithRole(WithCaller(context.Background(), "orders"), apikey.RolePublisher)
	other := WithRole(WithCaller(context.Background(), "billing"), apikey.RolePublisher)
	admin := WithRole(WithCaller(context.Background(), "ops"), apikey.RoleAdmin)

	publish := func(sendAt time.Time) string {
		t.Helper()
		req := validRequest()
		if !sendAt.IsZero() {
			req.Options = &notifyv1.Options{SendAt: timestamppb.New(sendAt)}
		}
		resp, err := f.pub.Publish(orders, req)
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetNotificationId()
	}
	cancel := func(ctx context.Context, id string) (*notifyv1.CancelResponse, error) {
		return f.pub.Cancel(ctx, &notifyv1.CancelRequest{NotificationId: id})
	}

	// Scheduled: cancelled, its send task gone, nothing was sent.
	scheduled := publish(time.Now().Add(time.Hour))
	// The refusal is about ownership, not the key's role, and does not say who published it.
	notOwner := "notification " + scheduled + " was published by another API key; only its publisher or an admin key may cancel it"
	if _, err := cancel(other, scheduled); status.Code(err) != codes.PermissionDenied || status.Convert(err).Message() != notOwner {
		t.Errorf("Cancel by another publisher: %v, want PERMISSION_DENIED: %s", err, notOwner)
	}
	resp, err := cancel(orders, scheduled)
	if err != nil || resp.GetSent() != 0 {
		t.Fatalf("Cancel of a scheduled notification = %v, %v; want 0 sent", resp, err)
	}
	if s := f.state(t, scheduled); s.Status != schema.StatusCancelled || s.Outbox != 0 {
		t.Errorf("after Cancel: status %s, %d outbox rows; want cancelled, the send task deleted", s.Status, s.Outbox)
	}
	got, err := f.admin.GetNotification(ctxOps, &notifyv1.GetNotificationRequest{NotificationId: scheduled})
	if err != nil {
		t.Fatal(err)
	}
	if n := got.GetNotification(); n.GetStatus() != notifyv1.NotificationStatus_NOTIFICATION_STATUS_CANCELLED ||
		n.GetCancelledBy() != "orders" || n.GetCancelTime() == nil {
		t.Errorf("GetNotification after Cancel = %v by %q at %v", n.GetStatus(), n.GetCancelledBy(), n.GetCancelTime())
	}
	if _, err := cancel(orders, scheduled); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("second Cancel: %v, want FAILED_PRECONDITION", err)
	}
	if r, err := f.admin.Replay(ctxOps, replayIDs(false, true, scheduled)); err != nil ||
		r.GetResults()[0].GetOutcome() != notifyv1.ReplayOutcome_REPLAY_OUTCOME_SKIPPED_CANCELLED {
		t.Errorf("forced Replay of a cancelled notification = %v, %v; want SKIPPED_CANCELLED", r, err)
	}

	// Pending, part sent: an admin may cancel another caller's notification; the response
	// counts what was sent, and the token waiting for a retry ends cancelled.
	pending := publish(time.Time{})
	f.settle(t, pending, schema.StatusPending, map[string]string{"a": schema.OutcomeDelivered, "b": schema.OutcomeRetrying})
	resp, err = cancel(admin, pending)
	if err != nil || resp.GetSent() != 2 || resp.GetRetryCancelled() != 1 {
		t.Errorf("admin's Cancel of a pending notification = %v, %v; want 2 sent, 1 of them waiting for a retry", resp, err)
	}

	// Retrying: cancelled too; the tokens waiting for a retry end cancelled in the same
	// transaction, so the counts add up, nothing stays retrying, and the CANCELLED status
	// event carries those final counts.
	retrying := publish(time.Time{})
	f.settle(t, retrying, schema.StatusRetrying, map[string]string{"a": schema.OutcomeDelivered, "b": schema.OutcomeRetrying,
		"c": schema.OutcomeRetrying, "d": schema.OutcomeFailed})
	// Each failed send left FCM's error behind.
	if _, err := f.db.Pool.Exec(context.Background(), `UPDATE deliveries SET error_code = 'UNAVAILABLE', error_message = 'fcm: unavailable'
		WHERE notification_id = $1 AND token IN ('b', 'c', 'd')`, retrying); err != nil {
		t.Fatal(err)
	}
	resp, err = cancel(orders, retrying)
	if err != nil || resp.GetSent() != 4 || resp.GetRetryCancelled() != 2 {
		t.Fatalf("Cancel of a retrying notification = %v, %v; want 4 sent, 2 of them waiting for a retry", resp, err)
	}
	got, err = f.admin.GetNotification(ctxOps, &notifyv1.GetNotificationRequest{NotificationId: retrying,
		Outcome: notifyv1.DeliveryOutcome_DELIVERY_OUTCOME_CANCELLED})
	if err != nil {
		t.Fatal(err)
	}
	want := &notifyv1.DeliveryCounts{Total: 4, Delivered: 1, Failed: 1, Cancelled: 2}
	if n := got.GetNotification(); n.GetStatus() != notifyv1.NotificationStatus_NOTIFICATION_STATUS_CANCELLED ||
		!proto.Equal(n.GetCounts(), want) || len(got.GetDeliveries()) != 2 {
		t.Errorf("after Cancel of a retrying notification: %v %v, %d cancelled deliveries; want CANCELLED %v, b and c cancelled",
			n.GetStatus(), n.GetCounts(), len(got.GetDeliveries()), want)
	}
	// A cancelled token shows no error (its UNAVAILABLE would read as if the cancel had
	// failed); the failed token keeps its own.
	for _, d := range got.GetDeliveries() {
		if d.GetErrorCode() != "" || d.GetErrorMessage() != "" {
			t.Errorf("cancelled token %s shows error %q %q, want none", d.GetToken(), d.GetErrorCode(), d.GetErrorMessage())
		}
	}
	failed, err := f.admin.GetNotification(ctxOps, &notifyv1.GetNotificationRequest{NotificationId: retrying,
		Outcome: notifyv1.DeliveryOutcome_DELIVERY_OUTCOME_FAILED})
	if err != nil {
		t.Fatal(err)
	}
	if ds := failed.GetDeliveries(); len(ds) != 1 || ds[0].GetErrorCode() != "UNAVAILABLE" || ds[0].GetErrorMessage() != "fcm: unavailable" {
		t.Errorf("failed deliveries after Cancel = %v, want d with its UNAVAILABLE kept", ds)
	}
	var event []byte
	if err := f.db.Pool.QueryRow(context.Background(), `SELECT body FROM outbox WHERE notification_id = $1
		AND message_type = 'notify.bus.v1.StatusEvent' AND routing_key LIKE 'cancelled.%'`, retrying).Scan(&event); err != nil {
		t.Fatalf("the CANCELLED status event: %v", err)
	}
	var ev busv1.StatusEvent
	if err := protojson.Unmarshal(event, &ev); err != nil {
		t.Fatalf("CANCELLED event %s: %v", event, err)
	}
	if c := ev.GetCounts(); c.GetRetrying() != 0 || c.GetCancelled() != 2 || c.GetTotal() != 4 {
		t.Errorf("CANCELLED event counts %v, want 4 tokens, none retrying, 2 cancelled", c)
	}

	delivered := publish(time.Time{})
	f.settle(t, delivered, schema.StatusDelivered, map[string]string{"a": schema.OutcomeDelivered})
	if _, err := cancel(orders, delivered); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("Cancel of a delivered notification: %v, want FAILED_PRECONDITION", err)
	}
	if s := f.state(t, delivered); s.Status != schema.StatusDelivered {
		t.Errorf("refused Cancel changed the status to %s", s.Status)
	}
	if _, err := cancel(orders, "01890000-0000-7000-8000-000000000000"); status.Code(err) != codes.NotFound {
		t.Errorf("Cancel of an unknown id: %v, want NOT_FOUND", err)
	}
	_, err = cancel(orders, "nope")
	if diff := cmp.Diff([]string{"notification_id"}, badFields(t, err)); diff != "" {
		t.Errorf("Cancel of a malformed id: fields (-want +got):\n%s", diff)
	}
}

// TestSendAtTooFarMessage: the refusal of a send_at more than 30 days ahead states the time
// given and its whole days ahead, also for the latest timestamp there is (where a Duration
// saturates).
func TestSendAtTooFarMessage(t *testing.T) {
	t.Parallel()
	soon := time.Now().Add(31*24*time.Hour + 2*time.Hour).Truncate(time.Second)
	latest := time.Date(9999, 12, 31, 23, 59, 59, 999_999_999, time.UTC)
	for _, tt := range []struct {
		at   time.Time
		want string // %d: the days ahead
	}{
		{soon, "must be at most 30 days ahead, got " + soon.UTC().Format(time.RFC3339) + " (%d days ahead)"},
		{latest, "must be at most 30 days ahead, got 9999-12-31T23:59:59.999999999Z (%d days ahead)"},
	} {
		req := validRequest()
		req.Options = &notifyv1.Options{SendAt: timestamppb.New(tt.at)}
		before := time.Now()
		v := validatePublish(req)
		after := time.Now()
		var got []string
		for _, fv := range v {
			got = append(got, fv.GetField()+": "+fv.GetDescription())
		}
		// The days are counted from the call's now: a second ticking over during the call
		// may make one fewer.
		days := func(now time.Time) string {
			return "options.send_at: " + fmt.Sprintf(tt.want, (tt.at.Unix()-now.Unix())/(24*60*60))
		}
		if want := days(before); !cmp.Equal([]string{want}, got) && !cmp.Equal([]string{days(after)}, got) {
			t.Errorf("send_at %v: got %q, want [%q]", tt.at, got, want)
		}
	}
}
