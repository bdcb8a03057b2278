package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	notifyv1 "notify/proto/gen/notify/v1"
)

// TestScheduledAndCancelled, with two producer replicas (two outbox relays): a notification
// scheduled 3 s ahead is not sent before its time and is sent exactly once after it; one
// cancelled before its time is never sent and ends CANCELLED; cancelling a delivered one is
// FAILED_PRECONDITION.
func TestScheduledAndCancelled(t *testing.T) {
	s := newStack(t)
	s.start("fcm-emulator", nil)
	s.start("producer", nil)
	s.start("producer", map[string]string{"GRPC_ADDR": freeAddr(t)})
	s.start("sender", nil)
	notifications, devices, admin := s.clients()
	registerOne(t, devices, "sched-user", "sched-tok")
	registerOne(t, devices, "cancel-user", "cancel-tok")

	schedule := func(user string, at time.Time) string {
		t.Helper()
		resp, err := notifications.Publish(ctxT(t), &notifyv1.PublishRequest{
			Type:       "e2e.scheduled",
			Recipients: &notifyv1.Recipients{Target: &notifyv1.Recipients_UserIds{UserIds: &notifyv1.UserIDs{UserIds: []string{user}}}},
			Content:    &notifyv1.Content{Title: "later"},
			Options:    &notifyv1.Options{SendAt: timestamppb.New(at)},
		})
		if err != nil {
			t.Fatalf("Publish at %v: %v", at, err)
		}
		return resp.GetNotificationId()
	}
	get := func(id string) *notifyv1.Notification {
		t.Helper()
		resp, err := admin.GetNotification(ctxT(t), &notifyv1.GetNotificationRequest{NotificationId: id, PageSize: 1})
		if err != nil {
			t.Fatalf("GetNotification: %v", err)
		}
		return resp.GetNotification()
	}

	at := time.Now().Add(3 * time.Second)
	scheduled := schedule("sched-user", at)
	cancelled := schedule("cancel-user", at)
	if n := get(scheduled); n.GetStatus() != notifyv1.NotificationStatus_NOTIFICATION_STATUS_SCHEDULED {
		t.Errorf("status right after Publish = %v, want SCHEDULED", n.GetStatus())
	}
	resp, err := notifications.Cancel(ctxT(t), &notifyv1.CancelRequest{NotificationId: cancelled})
	if err != nil || resp.GetSent() != 0 {
		t.Fatalf("Cancel before its time = %v, %v; want 0 sent", resp, err)
	}

	// Nothing is sent before the time.
	for time.Until(at) > 200*time.Millisecond {
		if got := s.emulatorMessages("sched-tok"); len(got) != 0 {
			t.Fatalf("sent %v before its time %v", got[0].ReceivedAt, at)
		}
		time.Sleep(100 * time.Millisecond)
	}
	var n *notifyv1.Notification
	waitFor(t, time.Minute, "the scheduled notification to be sent", func() bool {
		n = get(scheduled)
		return n.GetStatus() != notifyv1.NotificationStatus_NOTIFICATION_STATUS_SCHEDULED &&
			n.GetStatus() != notifyv1.NotificationStatus_NOTIFICATION_STATUS_PENDING
	})
	if n.GetStatus() != notifyv1.NotificationStatus_NOTIFICATION_STATUS_DELIVERED || n.GetCounts().GetDelivered() != 1 {
		t.Errorf("scheduled notification = %v %v, want DELIVERED to its one token", n.GetStatus(), n.GetCounts())
	}
	// Both relays' timers have fired by now: still exactly one send, at or after the time.
	time.Sleep(2 * time.Second)
	got := s.emulatorMessages("sched-tok")
	if len(got) != 1 {
		t.Fatalf("emulator received %d messages for the scheduled token, want exactly 1", len(got))
	}
	if got[0].ReceivedAt.Before(at) {
		t.Errorf("received at %v, before its time %v", got[0].ReceivedAt, at)
	}

	if got := s.emulatorMessages("cancel-tok"); len(got) != 0 {
		t.Errorf("the cancelled notification was sent: %v", got)
	}
	if n := get(cancelled); n.GetStatus() != notifyv1.NotificationStatus_NOTIFICATION_STATUS_CANCELLED || n.GetCounts().GetTotal() != 0 {
		t.Errorf("cancelled notification = %v %v, want CANCELLED with nothing sent", n.GetStatus(), n.GetCounts())
	}

	_, err = notifications.Cancel(ctxT(t), &notifyv1.CancelRequest{NotificationId: scheduled})
	if status.Code(err) != codes.FailedPrecondition {
		t.Errorf("Cancel of a delivered notification: %v, want FAILED_PRECONDITION", err)
	}

	// The same with notifyctl: publish --at, list --status scheduled, cancel.
	later := strings.TrimSpace(s.mustCtl(0, s.adminKey, "publish", "--user", "cancel-user", "--title", "later", "--at", "1h").stdout)
	if out := s.mustCtl(0, s.adminKey, "list", "--status", "scheduled").stdout; !strings.Contains(out, later) {
		t.Errorf("list --status scheduled does not show %s:\n%s", later, out)
	}
	if out := s.mustCtl(0, s.adminKey, "cancel", later).stdout; !strings.HasPrefix(out, "cancelled "+later+" (0 tokens had been sent") {
		t.Errorf("cancel printed %q", out)
	}
	if out := s.mustCtl(0, s.adminKey, "get", later).stdout; !strings.Contains(out, "status cancelled") {
		t.Errorf("get after cancel:\n%s", out)
	}
	if r := s.mustCtl(1, s.adminKey, "cancel", later); !strings.Contains(r.stderr, "FailedPrecondition") {
		t.Errorf("a second cancel: %s", r.stderr)
	}
	s.mustCtl(3, s.adminKey, "cancel", "01890a5d-ac96-774b-bcce-000000000404")
	if r := s.mustCtl(1, s.adminKey, "cancel", "not-an-id"); !strings.Contains(r.stderr, "notification_id") {
		t.Errorf("cancel of a malformed id: %s", r.stderr)
	}
	if got := s.emulatorMessages("cancel-tok"); len(got) != 0 {
		t.Errorf("a cancelled notification was sent: %v", got)
	}
}

// TestCancelWhileRetrying: a notification whose one token was delivered and whose other
// failed once and waits for its retry is cancelled before the retry fires. Cancel answers
// 2 sent, 1 of them waiting; the notification ends CANCELLED with its counts adding up
// (1 delivered, 1 cancelled, none retrying) and the waiting token's outcome CANCELLED; when
// the retry comes due the retrier finds nothing to send, and the emulator never sees the
// token a second time.
func TestCancelWhileRetrying(t *testing.T) {
	s := newStack(t)
	s.start("fcm-emulator", nil)
	s.start("producer", nil)
	// A long first wait, so that Cancel comes before the retry however loaded the machine is.
	retry := map[string]string{"RETRY_BASE_DELAY": "15s", "RETRY_MAX_DELAY": "30s"}
	s.start("sender", retry)
	retrier := s.start("retrier", retry)
	notifications, devices, admin := s.clients()

	// flaky1-: the emulator fails the token once, then would accept it.
	for i, tok := range []string{"cancel-retry-ok", "flaky1-cancel-retry"} {
		if _, err := devices.RegisterDevice(ctxT(t), &notifyv1.RegisterDeviceRequest{
			UserId: "rita", DeviceId: fmt.Sprintf("rita-%d", i), Token: tok, Platform: notifyv1.Platform_PLATFORM_ANDROID,
		}); err != nil {
			t.Fatal(err)
		}
	}
	id := publishTo(t, notifications, "rita")
	get := func(outcome notifyv1.DeliveryOutcome) *notifyv1.GetNotificationResponse {
		t.Helper()
		resp, err := admin.GetNotification(ctxT(t), &notifyv1.GetNotificationRequest{NotificationId: id, Outcome: outcome})
		if err != nil {
			t.Fatalf("GetNotification: %v", err)
		}
		return resp
	}
	waitFor(t, time.Minute, "the notification to wait for its retry", func() bool {
		return get(0).GetNotification().GetStatus() == notifyv1.NotificationStatus_NOTIFICATION_STATUS_RETRYING
	})
	resp, err := notifications.Cancel(ctxT(t), &notifyv1.CancelRequest{NotificationId: id})
	if err != nil || resp.GetSent() != 2 || resp.GetRetryCancelled() != 1 {
		t.Fatalf("Cancel while retrying = %v, %v; want 2 sent, 1 of them waiting for a retry", resp, err)
	}
	got := get(notifyv1.DeliveryOutcome_DELIVERY_OUTCOME_CANCELLED)
	want := &notifyv1.DeliveryCounts{Total: 2, Delivered: 1, Cancelled: 1}
	if n := got.GetNotification(); n.GetStatus() != notifyv1.NotificationStatus_NOTIFICATION_STATUS_CANCELLED ||
		!proto.Equal(n.GetCounts(), want) {
		t.Errorf("after Cancel: %v %v, want CANCELLED %v", n.GetStatus(), n.GetCounts(), want)
	}
	if d := got.GetDeliveries(); len(d) != 1 || d[0].GetToken() != "flaky1-cancel-retry" {
		t.Errorf("cancelled deliveries %v, want the flaky token's", d)
	}

	// The retry comes due: the retrier takes the task, finds the token settled and sends
	// nothing.
	waitFor(t, time.Minute, "the retrier to take the retry task", func() bool {
		_, body := retrier.get(t, "/metrics")
		return strings.Contains(body, `notify_retry_tasks_total{result="duplicate"} 1`)
	})
	if got := s.emulatorMessages("flaky1-cancel-retry"); len(got) != 1 {
		t.Errorf("the emulator received the waiting token %d times, want once (its first, failed, send)", len(got))
	}
	if n := get(0).GetNotification(); n.GetStatus() != notifyv1.NotificationStatus_NOTIFICATION_STATUS_CANCELLED ||
		!proto.Equal(n.GetCounts(), want) {
		t.Errorf("after the retry came due: %v %v, want still CANCELLED %v", n.GetStatus(), n.GetCounts(), want)
	}
}
