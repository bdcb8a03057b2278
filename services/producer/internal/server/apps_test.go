package server

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	notifyv1 "notify/proto/gen/notify/v1"
)

func newAppsFixture(t *testing.T) *fixture {
	t.Helper()
	f := newFixture(t)
	apps := NewApps("default", "staff")
	f.pub.SetApps(apps)
	f.dev.SetApps(apps)
	f.admin.SetApps(apps)
	return f
}

func TestPublishApps(t *testing.T) {
	t.Parallel()
	f := newAppsFixture(t)
	ctx := WithCaller(context.Background(), "orders")

	req := validRequest()
	req.App = "staff"
	resp, err := f.pub.Publish(ctx, req)
	if err != nil {
		t.Fatalf("Publish for app staff: %v", err)
	}
	plain, err := f.pub.Publish(ctx, validRequest())
	if err != nil {
		t.Fatalf("Publish naming no app: %v", err)
	}
	// Each delivery was sent through its notification's app.
	f.settle(t, resp.GetNotificationId(), "delivered", map[string]string{"s1": "delivered", "s2": "invalid"})
	f.settle(t, plain.GetNotificationId(), "delivered", map[string]string{"p1": "delivered"})
	for id, want := range map[string]string{resp.GetNotificationId(): "staff", plain.GetNotificationId(): "default"} {
		got, err := f.admin.GetNotification(ctxOps, &notifyv1.GetNotificationRequest{NotificationId: id})
		if err != nil {
			t.Fatal(err)
		}
		if got.GetNotification().GetApp() != want {
			t.Errorf("notification %s: app %q, want %q", id, got.GetNotification().GetApp(), want)
		}
		if len(got.GetDeliveries()) == 0 {
			t.Errorf("notification %s: no deliveries", id)
		}
		for _, d := range got.GetDeliveries() {
			if d.GetApp() != want {
				t.Errorf("notification %s, delivery %s: app %q, want %q", id, d.GetToken(), d.GetApp(), want)
			}
		}
	}
	list, err := f.admin.ListNotifications(ctxOps, &notifyv1.ListNotificationsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var apps []string
	for _, n := range list.GetNotifications() {
		apps = append(apps, n.GetApp())
	}
	if diff := cmp.Diff([]string{"default", "staff"}, apps, cmpSorted); diff != "" {
		t.Errorf("listed apps (-want +got):\n%s", diff)
	}

	// An unknown app is refused with the field, before anything is written.
	req = validRequest()
	req.App = "shop"
	_, err = f.pub.Publish(ctx, req)
	if diff := cmp.Diff([]string{"app"}, badFields(t, err)); diff != "" {
		t.Errorf("unknown app: fields (-want +got):\n%s", diff)
	}

	// A key limited to default may not publish for staff.
	limited := WithKeyApps(ctx, []string{"default"})
	req = validRequest()
	req.App = "staff"
	if _, err := f.pub.Publish(limited, req); status.Code(err) != codes.PermissionDenied {
		t.Errorf("key limited to default, Publish for staff: %v, want PERMISSION_DENIED", err)
	}
	if _, err := f.pub.Publish(limited, validRequest()); err != nil {
		t.Errorf("key limited to default, Publish for default: %v", err)
	}
	var n int
	if err := f.db.Pool.QueryRow(ctx, "SELECT count(*) FROM notifications").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 3 {
		t.Errorf("%d notifications stored, want 3 (the refused ones wrote nothing)", n)
	}
}

func TestRegisterDevicesApps(t *testing.T) {
	t.Parallel()
	f := newAppsFixture(t)
	ctx := context.Background()
	android := notifyv1.Platform_PLATFORM_ANDROID

	// The same token in two apps is two registrations; within one app it moves.
	if _, err := f.dev.RegisterDevices(ctx, &notifyv1.RegisterDevicesRequest{Devices: []*notifyv1.Device{
		{UserId: "u1", DeviceId: "d1", Token: "tok", Platform: android},
		{UserId: "u1", DeviceId: "d2", Token: "tok", Platform: android, App: "staff"},
	}}); err != nil {
		t.Fatalf("RegisterDevices: %v", err)
	}
	if _, err := f.dev.RegisterDevice(ctx, &notifyv1.RegisterDeviceRequest{UserId: "u2", DeviceId: "d3", Token: "tok", Platform: android, App: "staff"}); err != nil {
		t.Fatalf("RegisterDevice: %v", err)
	}
	rows, err := f.db.Pool.Query(ctx, "SELECT device_id || ':' || app || ':' || active::text FROM devices ORDER BY device_id")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		got = append(got, s)
	}
	if diff := cmp.Diff([]string{"d1:default:true", "d2:staff:false", "d3:staff:true"}, got); diff != "" {
		t.Errorf("devices (-want +got):\n%s", diff)
	}

	_, err = f.dev.RegisterDevices(ctx, &notifyv1.RegisterDevicesRequest{Devices: []*notifyv1.Device{
		{UserId: "u1", DeviceId: "d4", Token: "t4", Platform: android, App: "shop"},
		{UserId: "u1", DeviceId: "d5", Token: "t5", Platform: android, App: "staff"},
		{UserId: "u1", DeviceId: "d6", Token: "t5", Platform: android, App: "staff"},
	}})
	if diff := cmp.Diff([]string{"devices[0].app", "devices[2].token"}, badFields(t, err), cmpSorted); diff != "" {
		t.Errorf("RegisterDevices with an unknown app and a repeated token: fields (-want +got):\n%s", diff)
	}
	limited := WithKeyApps(ctx, []string{"default"})
	if _, err := f.dev.RegisterDevice(limited, &notifyv1.RegisterDeviceRequest{UserId: "u", DeviceId: "d9", Token: "t9", Platform: android, App: "staff"}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("key limited to default registering for staff: %v, want PERMISSION_DENIED", err)
	}
}

func TestCreateAPIKeyApps(t *testing.T) {
	t.Parallel()
	f := newAppsFixture(t)
	resp, err := f.admin.CreateAPIKey(ctxOps, &notifyv1.CreateAPIKeyRequest{Name: "staff-pub", Role: notifyv1.Role_ROLE_PUBLISHER, Apps: []string{"staff"}})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"staff"}, resp.GetKey().GetApps()); diff != "" {
		t.Errorf("created key's apps (-want +got):\n%s", diff)
	}
	list, err := f.admin.ListAPIKeys(ctxOps, &notifyv1.ListAPIKeysRequest{})
	if err != nil || len(list.GetKeys()) != 1 || !cmp.Equal(list.GetKeys()[0].GetApps(), []string{"staff"}) {
		t.Errorf("ListAPIKeys = %v (%v), want one key limited to staff", list, err)
	}
	_, err = f.admin.CreateAPIKey(ctxOps, &notifyv1.CreateAPIKeyRequest{Name: "x", Role: notifyv1.Role_ROLE_ADMIN, Apps: []string{"shop"}})
	if diff := cmp.Diff([]string{"apps", "apps[0]"}, badFields(t, err), cmpSorted); diff != "" {
		t.Errorf("admin key limited to an unknown app: fields (-want +got):\n%s", diff)
	}
	// An empty name (notifyctl --apps "staff,") was stored as an app no call names: "" is
	// the default app in a call, and a key limited to [""] could act for nothing. A name
	// given twice is a typo as well.
	_, err = f.admin.CreateAPIKey(ctxOps, &notifyv1.CreateAPIKeyRequest{Name: "y", Role: notifyv1.Role_ROLE_PUBLISHER, Apps: []string{"staff", "", "staff"}})
	if diff := cmp.Diff([]string{"apps[1]", "apps[2]"}, badFields(t, err), cmpSorted); diff != "" {
		t.Errorf("apps with an empty and a repeated name: fields (-want +got):\n%s", diff)
	}
}

// TestDeviceIdentityPerApp: a device is an installation of one app. The same device id and
// the same token registered for two apps (iOS's identifierForVendor is shared by a vendor's
// apps) are two devices: registering in one leaves the other active, and UnregisterDevice,
// CheckDevice and ListDevices act on the app they name.
func TestDeviceIdentityPerApp(t *testing.T) {
	t.Parallel()
	f := newAppsFixture(t)
	ctx := context.Background()
	ios := notifyv1.Platform_PLATFORM_IOS

	for _, app := range []string{"", "staff"} {
		resp, err := f.dev.RegisterDevice(ctx, &notifyv1.RegisterDeviceRequest{UserId: "u1", DeviceId: "idfv", Token: "tok", Platform: ios, App: app})
		if err != nil {
			t.Fatalf("RegisterDevice for app %q: %v", app, err)
		}
		if !resp.GetCreated() {
			t.Errorf("RegisterDevice for app %q: created=false, want a new device", app)
		}
	}
	// The same id twice in one batch is fine across apps, refused within one.
	r, err := f.dev.RegisterDevices(ctx, &notifyv1.RegisterDevicesRequest{Devices: []*notifyv1.Device{
		{UserId: "u2", DeviceId: "shared", Token: "t-a", Platform: ios},
		{UserId: "u2", DeviceId: "shared", Token: "t-b", Platform: ios, App: "staff"},
	}})
	if err != nil || r.GetCreated() != 2 {
		t.Fatalf("RegisterDevices of one device id in two apps = %v, %v; want 2 created", r, err)
	}
	_, err = f.dev.RegisterDevices(ctx, &notifyv1.RegisterDevicesRequest{Devices: []*notifyv1.Device{
		{UserId: "u2", DeviceId: "x", Token: "t-x", Platform: ios, App: "staff"},
		{UserId: "u2", DeviceId: "x", Token: "t-y", Platform: ios, App: "staff"},
	}})
	if diff := cmp.Diff([]string{"devices[1].device_id"}, badFields(t, err)); diff != "" {
		t.Errorf("a device id twice in one app: fields (-want +got):\n%s", diff)
	}

	devices := func() []string {
		t.Helper()
		rows, err := f.db.Pool.Query(ctx, "SELECT app || '/' || device_id || ':' || token || ':' || active::text FROM devices ORDER BY 1")
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for rows.Next() {
			var s string
			if err := rows.Scan(&s); err != nil {
				t.Fatal(err)
			}
			got = append(got, s)
		}
		return got
	}
	if diff := cmp.Diff([]string{"default/idfv:tok:true", "default/shared:t-a:true", "staff/idfv:tok:true", "staff/shared:t-b:true"}, devices()); diff != "" {
		t.Errorf("devices (-want +got):\n%s", diff)
	}

	check := func(ctx context.Context, app string) (bool, error) {
		resp, err := f.dev.CheckDevice(ctx, &notifyv1.CheckDeviceRequest{UserId: "u1", DeviceId: "idfv", App: app})
		return resp.GetRegistered(), err
	}
	// Unregistering the staff app's device leaves the default app's one.
	un, err := f.dev.UnregisterDevice(ctx, &notifyv1.UnregisterDeviceRequest{DeviceId: "idfv", App: "staff"})
	if err != nil || !un.GetFound() {
		t.Fatalf("UnregisterDevice staff/idfv = %v, %v; want found", un, err)
	}
	if reg, err := check(ctx, "staff"); err != nil || reg {
		t.Errorf("CheckDevice staff/idfv after unregister = %v, %v; want false", reg, err)
	}
	if reg, err := check(ctx, ""); err != nil || !reg {
		t.Errorf("CheckDevice default/idfv = %v, %v; want true (another app's device)", reg, err)
	}
	if diff := cmp.Diff([]string{"default/idfv:tok:true", "default/shared:t-a:true", "staff/idfv:tok:false", "staff/shared:t-b:true"}, devices()); diff != "" {
		t.Errorf("devices after UnregisterDevice staff/idfv (-want +got):\n%s", diff)
	}

	// ListDevices: both apps' devices, paged through the tie on created_at (RegisterDevices
	// writes one now() for the batch); filtered by app; a limited key sees only its apps.
	list := func(ctx context.Context, app string) ([]string, error) {
		var got []string
		req := &notifyv1.ListDevicesRequest{UserId: "u2", PageSize: 1, App: app}
		for {
			resp, err := f.dev.ListDevices(ctx, req)
			if err != nil {
				return got, err
			}
			for _, d := range resp.GetDevices() {
				got = append(got, d.GetApp()+"/"+d.GetDeviceId())
			}
			if resp.GetNextPageToken() == "" {
				return got, nil
			}
			req.PageToken = resp.GetNextPageToken()
		}
	}
	for _, tc := range []struct {
		name string
		ctx  context.Context
		app  string
		want []string
	}{
		{"every app", ctx, "", []string{"default/shared", "staff/shared"}},
		{"app staff", ctx, "staff", []string{"staff/shared"}},
		{"key limited to staff", WithKeyApps(ctx, []string{"staff"}), "", []string{"staff/shared"}},
	} {
		got, err := list(tc.ctx, tc.app)
		if err != nil {
			t.Errorf("ListDevices, %s: %v", tc.name, err)
		}
		if diff := cmp.Diff(tc.want, got, cmpSorted); diff != "" {
			t.Errorf("ListDevices, %s (-want +got):\n%s", tc.name, diff)
		}
	}

	// A page token of a producer from before 0015 (the device id alone) still pages.
	old := cursor{at: time.Now().Add(time.Hour), id: "zzz"}.String()
	resp, err := f.dev.ListDevices(ctx, &notifyv1.ListDevicesRequest{UserId: "u2", PageToken: old})
	if err != nil || len(resp.GetDevices()) != 2 {
		t.Errorf("ListDevices with a page token from before 0015 = %v, %v; want both devices of u2", resp, err)
	}

	// Unknown apps are INVALID_ARGUMENT (field app), other apps of a limited key
	// PERMISSION_DENIED, and nothing changes.
	_, err = f.dev.UnregisterDevice(ctx, &notifyv1.UnregisterDeviceRequest{DeviceId: "idfv", App: "shop"})
	if diff := cmp.Diff([]string{"app"}, badFields(t, err)); diff != "" {
		t.Errorf("UnregisterDevice, unknown app: fields (-want +got):\n%s", diff)
	}
	_, err = f.dev.CheckDevice(ctx, &notifyv1.CheckDeviceRequest{DeviceId: "idfv", App: "shop"})
	if diff := cmp.Diff([]string{"app", "user_id"}, badFields(t, err), cmpSorted); diff != "" {
		t.Errorf("CheckDevice, unknown app and no user: fields (-want +got):\n%s", diff)
	}
	_, err = f.dev.ListDevices(ctx, &notifyv1.ListDevicesRequest{UserId: "u2", App: "shop"})
	if diff := cmp.Diff([]string{"app"}, badFields(t, err)); diff != "" {
		t.Errorf("ListDevices, unknown app: fields (-want +got):\n%s", diff)
	}
	limited := WithKeyApps(ctx, []string{"staff"})
	if _, err := f.dev.UnregisterDevice(limited, &notifyv1.UnregisterDeviceRequest{DeviceId: "idfv"}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("key limited to staff, UnregisterDevice of default: %v, want PERMISSION_DENIED", err)
	}
	if _, err := check(limited, "default"); status.Code(err) != codes.PermissionDenied {
		t.Errorf("key limited to staff, CheckDevice of default: %v, want PERMISSION_DENIED", err)
	}
	if _, err := f.dev.ListDevices(limited, &notifyv1.ListDevicesRequest{UserId: "u2", App: "default"}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("key limited to staff, ListDevices of default: %v, want PERMISSION_DENIED", err)
	}
	if diff := cmp.Diff([]string{"default/idfv:tok:true", "default/shared:t-a:true", "staff/idfv:tok:false", "staff/shared:t-b:true"}, devices()); diff != "" {
		t.Errorf("devices after refused calls (-want +got):\n%s", diff)
	}
}
