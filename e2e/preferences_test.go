package e2e

import (
	"testing"
	"time"

	notifyv1 "notify/proto/gen/notify/v1"
)

// TestMutedTypeIsSkippedForThatUserOnly: a user who muted a type gets nothing of that type
// (its devices end skipped_preference, counted, never sent), another user does, the muted
// user still gets other types, and an admin's ignore_preferences reaches everyone.
func TestMutedTypeIsSkippedForThatUserOnly(t *testing.T) {
	s := newStack(t)
	s.start("fcm-emulator", nil)
	s.start("producer", nil)
	s.start("sender", nil)
	notifications, devices, admin := s.clients()

	registerOne(t, devices, "muter", "pref-tok-muter")
	registerOne(t, devices, "listener", "pref-tok-listener")
	if _, err := devices.SetPreferences(ctxT(t), &notifyv1.SetPreferencesRequest{UserId: "muter", MutedTypes: []string{"e2e.promo"}}); err != nil {
		t.Fatalf("SetPreferences: %v", err)
	}

	publish := func(typ string, ignore bool, to *notifyv1.Recipients) *notifyv1.Notification {
		t.Helper()
		resp, err := notifications.Publish(ctxT(t), &notifyv1.PublishRequest{
			Type: typ, Recipients: to, Content: &notifyv1.Content{Title: typ},
			Options: &notifyv1.Options{IgnorePreferences: ignore},
		})
		if err != nil {
			t.Fatalf("Publish %s: %v", typ, err)
		}
		return waitFinal(t, admin, resp.GetNotificationId(), time.Minute)
	}
	users := &notifyv1.Recipients{Target: &notifyv1.Recipients_UserIds{UserIds: &notifyv1.UserIDs{UserIds: []string{"muter", "listener"}}}}
	everyone := &notifyv1.Recipients{Target: &notifyv1.Recipients_AllDevices{AllDevices: &notifyv1.AllDevices{}}}

	for _, tc := range []struct {
		name    string
		n       *notifyv1.Notification
		skipped int64
	}{
		{"muted type to users", publish("e2e.promo", false, users), 1},
		{"muted type to everyone", publish("e2e.promo", false, everyone), 1},
		{"other type", publish("e2e.order", false, users), 0},
		{"muted type ignoring preferences", publish("e2e.promo", true, users), 0},
	} {
		c := tc.n.GetCounts()
		if tc.n.GetStatus() != notifyv1.NotificationStatus_NOTIFICATION_STATUS_DELIVERED || c.GetTotal() != 2 ||
			c.GetSkipped() != tc.skipped || c.GetDelivered() != 2-tc.skipped {
			t.Errorf("%s: %v %v, want DELIVERED, 2 tokens, %d skipped", tc.name, tc.n.GetStatus(), c, tc.skipped)
		}
	}

	// The emulator saw the muter's token only for the two notifications that were not muted,
	// the listener's for all four.
	if got := len(s.emulatorMessages("pref-tok-muter")); got != 2 {
		t.Errorf("muter's token received %d messages, want 2 (order, and promo ignoring preferences)", got)
	}
	if got := len(s.emulatorMessages("pref-tok-listener")); got != 4 {
		t.Errorf("listener's token received %d messages, want 4", got)
	}
	// The per-token outcome says why.
	resp, err := admin.GetNotification(ctxT(t), &notifyv1.GetNotificationRequest{
		NotificationId: publish("e2e.promo", false, users).GetId(),
		Outcome:        notifyv1.DeliveryOutcome_DELIVERY_OUTCOME_SKIPPED_PREFERENCE,
	})
	if err != nil {
		t.Fatal(err)
	}
	if d := resp.GetDeliveries(); len(d) != 1 || d[0].GetUserId() != "muter" || d[0].GetToken() != "pref-tok-muter" {
		t.Errorf("skipped deliveries = %v, want the muter's one token", d)
	}
}
