package e2e

import (
	"strings"
	"testing"
	"time"

	notifyv1 "notify/proto/gen/notify/v1"
)

// TestMutedTypeIsSkippedForThatUserOnly: a user who muted a type gets nothing of that type
// (its devices end skipped_preference, counted, never sent), another user does, the muted
// user still gets other types, and an admin's ignore_preferences reaches everyone. Then with
// notifyctl: preferences set and get, and ignore_preferences from a publisher key allowed to
// (keys create --allow-ignore-preferences) is sent, from one without it refused.
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

	// notifyctl, with publisher keys: one allowed to ignore preferences, one not.
	allowed := strings.TrimSpace(s.mustCtl(0, s.adminKey, "keys", "create", "pref-security", "--role", "publisher",
		"--allow-ignore-preferences").stdout)
	plain := strings.TrimSpace(s.mustCtl(0, s.adminKey, "keys", "create", "pref-plain", "--role", "publisher").stdout)
	if keys := s.mustCtl(0, s.adminKey, "keys", "list").stdout; !hasRowSuffix(keys, "pref-security", "yes") || !hasRowSuffix(keys, "pref-plain", "no") {
		t.Errorf("keys list does not show who may ignore preferences:\n%s", keys)
	}
	set := s.mustCtl(0, plain, "preferences", "set", "--user", "listener", "--mute", "e2e.alert,e2e.digest")
	if got := strings.Fields(set.stdout); strings.Join(got, " ") != "MUTED TYPE e2e.alert e2e.digest" {
		t.Errorf("preferences set printed %q", set.stdout)
	}
	if got := s.mustCtl(0, plain, "preferences", "get", "--user", "listener", "--no-headers").stdout; got != "e2e.alert\ne2e.digest\n" {
		t.Errorf("preferences get printed %q, want the two types", got)
	}
	if r := s.mustCtl(1, plain, "preferences", "set", "--user", "listener", "--mute", "not a type"); !strings.Contains(r.stderr, "muted_types[0]") {
		t.Errorf("preferences set with a bad type: %s", r.stderr)
	}
	alert := []string{"publish", "--user", "listener", "--type", "e2e.alert", "--title", "New sign-in", "--ignore-preferences"}
	if r := s.mustCtl(4, plain, alert...); !strings.Contains(r.stderr, "PermissionDenied") {
		t.Errorf("ignore_preferences from a key without the permission: %s", r.stderr)
	}
	muted := strings.TrimSpace(s.mustCtl(0, plain, alert[:len(alert)-1]...).stdout)
	ignoring := strings.TrimSpace(s.mustCtl(0, allowed, alert...).stdout)
	for id, wantSkipped := range map[string]int64{muted: 1, ignoring: 0} {
		n := waitFinal(t, admin, id, time.Minute)
		if c := n.GetCounts(); n.GetStatus() != notifyv1.NotificationStatus_NOTIFICATION_STATUS_DELIVERED || c.GetTotal() != 1 ||
			c.GetSkipped() != wantSkipped || c.GetDelivered() != 1-wantSkipped {
			t.Errorf("alert %s: %v %v, want DELIVERED with %d skipped", id, n.GetStatus(), c, wantSkipped)
		}
	}
	if got := len(s.emulatorMessages("pref-tok-listener")); got != 6 {
		t.Errorf("listener's token received %d messages, want 6: the 5 above and the alert ignoring preferences (the refused and the muted one never sent)", got)
	}
	s.mustCtl(0, plain, "preferences", "set", "--user", "listener", "--none")
	if r := s.mustCtl(0, plain, "preferences", "get", "--user", "listener"); len(strings.Fields(r.stdout)) != 2 {
		t.Errorf("preferences get after set --none: %q", r.stdout)
	}
}

// hasRowSuffix reports whether a table has a row that starts with first and ends with last.
func hasRowSuffix(table, first, last string) bool {
	for _, line := range strings.Split(table, "\n") {
		if f := strings.Fields(line); len(f) > 1 && f[0] == first && f[len(f)-1] == last {
			return true
		}
	}
	return false
}
