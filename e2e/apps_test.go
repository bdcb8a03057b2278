package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	notifyv1 "notify/proto/gen/notify/v1"
)

// appsFile writes an FCM_APPS_FILE naming apps at the stack's emulator, each its own
// project "proj-<app>", with the given quotas (0: FCM's default).
func (s *stack) appsFile(rates map[string]int) string {
	s.t.Helper()
	body := ""
	for app, rate := range rates {
		body += fmt.Sprintf("- name: %s\n  project_id: proj-%s\n  endpoint: %s/v1\n", app, app, s.emulatorURL)
		if rate > 0 {
			body += fmt.Sprintf("  rate_per_minute: %d\n", rate)
		}
	}
	path := filepath.Join(s.t.TempDir(), "apps.yaml")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		s.t.Fatal(err)
	}
	return path
}

// publisherClient returns a NotificationService client authenticated with a new publisher
// key limited to apps.
func (s *stack) publisherClient(name string, apps ...string) notifyv1.NotificationServiceClient {
	s.t.Helper()
	_, _, admin := s.clients()
	resp, err := admin.CreateAPIKey(ctxT(s.t), &notifyv1.CreateAPIKeyRequest{Name: name, Role: notifyv1.Role_ROLE_PUBLISHER, Apps: apps})
	if err != nil {
		s.t.Fatalf("CreateAPIKey: %v", err)
	}
	conn, err := grpc.NewClient(s.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(bearerKey(resp.GetSecret())))
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() { conn.Close() })
	return notifyv1.NewNotificationServiceClient(conn)
}

// TestAppsAreSeparate: devices of two apps; a broadcast for app b reaches only b's devices
// and only b's project at the emulator; a key limited to app a is refused on b.
func TestAppsAreSeparate(t *testing.T) {
	s := newStack(t)
	s.start("fcm-emulator", nil)
	apps := s.appsFile(map[string]int{"default": 0, "b": 0})
	s.start("producer", map[string]string{"APPS": "default,b"})
	s.start("sender", map[string]string{"FCM_APPS_FILE": apps, "FCM_ENDPOINT": ""})
	notifications, devices, admin := s.clients()

	// The same token string under both apps, plus one device of each app alone.
	var batch []*notifyv1.Device
	for _, d := range []struct{ app, device, token string }{
		{"", "a-1", "shared-token"}, {"", "a-2", "a-only"}, {"b", "b-1", "shared-token"}, {"b", "b-2", "b-only"},
	} {
		batch = append(batch, &notifyv1.Device{UserId: "u-" + d.device, DeviceId: d.device, Token: d.token,
			Platform: notifyv1.Platform_PLATFORM_ANDROID, App: d.app})
	}
	if _, err := devices.RegisterDevices(ctxT(t), &notifyv1.RegisterDevicesRequest{Devices: batch}); err != nil {
		t.Fatalf("RegisterDevices: %v", err)
	}

	broadcast := func(app string) *notifyv1.PublishRequest {
		return &notifyv1.PublishRequest{Type: "e2e.apps", App: app, Content: &notifyv1.Content{Title: "hi " + app},
			Recipients: &notifyv1.Recipients{Target: &notifyv1.Recipients_AllDevices{AllDevices: &notifyv1.AllDevices{}}}}
	}
	resp, err := notifications.Publish(ctxT(t), broadcast("b"))
	if err != nil {
		t.Fatalf("Publish for b: %v", err)
	}
	n := waitFinal(t, admin, resp.GetNotificationId(), time.Minute)
	if n.GetApp() != "b" || n.GetCounts().GetTotal() != 2 || n.GetCounts().GetDelivered() != 2 {
		t.Errorf("notification for b: app %q, counts %v; want app b, 2 delivered", n.GetApp(), n.GetCounts())
	}
	st := s.emulatorStats(true)
	if got := st.Projects["proj-b"]; got.Requests != 2 || got.Delivered != 2 || len(st.Projects) != 1 {
		t.Errorf("emulator projects %v, want only proj-b with 2 delivered", st.Projects)
	}
	if _, ok := st.Tokens["a-only"]; ok {
		t.Errorf("a device of the default app received app b's broadcast")
	}

	// The default app's broadcast goes to its own project.
	resp, err = notifications.Publish(ctxT(t), broadcast(""))
	if err != nil {
		t.Fatalf("Publish for default: %v", err)
	}
	waitFinal(t, admin, resp.GetNotificationId(), time.Minute)
	st = s.emulatorStats(false)
	if st.Projects["proj-default"].Delivered != 2 || st.Projects["proj-b"].Requests != 2 {
		t.Errorf("emulator projects after the default broadcast: %v, want 2 each", st.Projects)
	}

	// An unknown app is bad input; a key limited to the default app may not publish for b.
	_, err = notifications.Publish(ctxT(t), broadcast("c"))
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("Publish for an unknown app: %v, want INVALID_ARGUMENT", err)
	}
	limited := s.publisherClient("only-default", "default")
	if _, err := limited.Publish(ctxT(t), broadcast("b")); status.Code(err) != codes.PermissionDenied {
		t.Errorf("key limited to default publishing for b: %v, want PERMISSION_DENIED", err)
	}
	if _, err := limited.Publish(ctxT(t), broadcast("default")); err != nil {
		t.Errorf("key limited to default publishing for default: %v", err)
	}
}

// TestPacingHoldsTheQuotaAcrossSenders: with the emulator's quota and the app's
// rate_per_minute both 3,000 a minute, a 2,000-token broadcast handled by two senders
// completes with no 429 and takes at least the time the quota implies.
func TestPacingHoldsTheQuotaAcrossSenders(t *testing.T) {
	if testing.Short() {
		t.Skip("takes about 40 s")
	}
	const quota, tokens = 3000, 2000
	s := newStack(t)
	s.start("fcm-emulator", map[string]string{"FCM_EMULATOR_QUOTA_PER_MINUTE": fmt.Sprint(quota)})
	apps := s.appsFile(map[string]int{"default": quota})
	s.start("producer", nil)
	env := map[string]string{"FCM_APPS_FILE": apps, "FCM_ENDPOINT": ""}
	s.start("sender", env)
	s.start("sender", env)
	s.start("retrier", env)
	notifications, devices, admin := s.clients()
	registerUsers(t, devices, "paced", tokens/10, 10)

	start := time.Now()
	resp, err := notifications.Publish(ctxT(t), &notifyv1.PublishRequest{Type: "e2e.paced", Content: &notifyv1.Content{Title: "paced"},
		Recipients: &notifyv1.Recipients{Target: &notifyv1.Recipients_AllDevices{AllDevices: &notifyv1.AllDevices{}}}})
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	n := waitFinal(t, admin, resp.GetNotificationId(), 3*time.Minute)
	took := time.Since(start)
	if n.GetStatus() != notifyv1.NotificationStatus_NOTIFICATION_STATUS_DELIVERED || n.GetCounts().GetDelivered() != tokens {
		t.Errorf("notification %v %v, want DELIVERED with %d delivered", n.GetStatus(), n.GetCounts(), tokens)
	}
	st := s.emulatorStats(false)
	if q := st.Failed["QUOTA_EXCEEDED"]; q != 0 || st.Delivered != tokens {
		t.Errorf("emulator: %d delivered, %d QUOTA_EXCEEDED; want %d and none", st.Delivered, q, tokens)
	}
	// 2,000 sends at 3,000 a minute take 40 s; the schedule may start one grant early.
	if least := 38 * time.Second; took < least {
		t.Errorf("broadcast took %s, want at least %s at %d a minute", took.Round(time.Millisecond), least, quota)
	}
	t.Logf("%d tokens at a quota of %d/min: %s", tokens, quota, took.Round(time.Millisecond))
}
