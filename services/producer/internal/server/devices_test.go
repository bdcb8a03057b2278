package server

import (
	"context"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/status"

	"notify/pkg/pgtest"
	notifyv1 "notify/proto/gen/notify/v1"
)

func TestListDevices(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	s := NewDevices(db.Pool, discard, prometheus.NewRegistry())
	register := func(user, device, token string, p notifyv1.Platform) {
		t.Helper()
		if _, err := s.RegisterDevice(ctx, &notifyv1.RegisterDeviceRequest{UserId: user, DeviceId: device, Token: token, Platform: p}); err != nil {
			t.Fatalf("RegisterDevice(%s): %v", device, err)
		}
	}
	register("ana", "ana-phone", "tok-phone", notifyv1.Platform_PLATFORM_ANDROID)
	register("ana", "ana-tablet", "tok-tablet", notifyv1.Platform_PLATFORM_IOS)
	register("ana", "ana-browser", "tok-browser", notifyv1.Platform_PLATFORM_WEB)
	register("ana", "ana-old", "tok-old", notifyv1.Platform_PLATFORM_ANDROID)
	register("bob", "bob-phone", "tok-bob", notifyv1.Platform_PLATFORM_ANDROID)
	if _, err := s.UnregisterDevice(ctx, &notifyv1.UnregisterDeviceRequest{DeviceId: "ana-tablet"}); err != nil {
		t.Fatal(err)
	}
	// ana-old's token is registered by a new installation: ana-old is deactivated as moved.
	register("ana", "ana-new", "tok-old", notifyv1.Platform_PLATFORM_ANDROID)

	type row struct {
		Device, Token string
		Platform      notifyv1.Platform
		Active        bool
		Reason        string
		Deactivated   bool
	}
	rowsOf := func(devs []*notifyv1.Device) []row {
		var out []row
		for _, d := range devs {
			if d.GetUserId() != "ana" || d.GetCreateTime() == nil || d.GetRegisterTime() == nil || d.GetLastSeenTime() == nil {
				t.Errorf("device %v: want user ana and its create, register and last seen times", d)
			}
			out = append(out, row{d.GetDeviceId(), d.GetToken(), d.GetPlatform(), d.GetActive(), d.GetDeactivationReason(), d.GetDeactivateTime() != nil})
		}
		return out
	}
	list := func(req *notifyv1.ListDevicesRequest) *notifyv1.ListDevicesResponse {
		t.Helper()
		resp, err := s.ListDevices(ctx, req)
		if err != nil {
			t.Fatalf("ListDevices(%v): %v", req, err)
		}
		return resp
	}

	// Newest first, over pages of 2.
	want := []row{
		{"ana-new", "tok-old", notifyv1.Platform_PLATFORM_ANDROID, true, "", false},
		{"ana-old", "tok-old", notifyv1.Platform_PLATFORM_ANDROID, false, "token_moved", true},
		{"ana-browser", "tok-browser", notifyv1.Platform_PLATFORM_WEB, true, "", false},
		{"ana-tablet", "tok-tablet", notifyv1.Platform_PLATFORM_IOS, false, "unregistered", true},
		{"ana-phone", "tok-phone", notifyv1.Platform_PLATFORM_ANDROID, true, "", false},
	}
	var got []row
	token, pages := "", 0
	for {
		resp := list(&notifyv1.ListDevicesRequest{UserId: "ana", PageSize: 2, PageToken: token})
		got = append(got, rowsOf(resp.GetDevices())...)
		pages++
		if token = resp.GetNextPageToken(); token == "" {
			break
		}
	}
	if diff := cmp.Diff(want, got); diff != "" || pages != 3 {
		t.Errorf("ListDevices in %d pages (want 3) (-want +got):\n%s", pages, diff)
	}

	active := rowsOf(list(&notifyv1.ListDevicesRequest{UserId: "ana", ActiveOnly: true}).GetDevices())
	if diff := cmp.Diff([]row{want[0], want[2], want[4]}, active); diff != "" {
		t.Errorf("ListDevices(active_only) (-want +got):\n%s", diff)
	}
	if resp := list(&notifyv1.ListDevicesRequest{UserId: "nobody"}); len(resp.GetDevices()) != 0 || resp.GetNextPageToken() != "" {
		t.Errorf("ListDevices(unknown user) = %v, want empty", resp)
	}

	// A token that reads as a topic or condition key is refused.
	_, err := s.RegisterDevice(ctx, &notifyv1.RegisterDeviceRequest{UserId: "ana", DeviceId: "d", Token: "/topics/news",
		Platform: notifyv1.Platform_PLATFORM_ANDROID})
	if diff := cmp.Diff([]string{"token"}, badFields(t, err)); diff != "" {
		t.Errorf("RegisterDevice(/topics/news) fields (-want +got):\n%s", diff)
	}

	for _, tt := range []struct {
		req     *notifyv1.ListDevicesRequest
		want    []string
		message string // the first violation's
	}{
		{&notifyv1.ListDevicesRequest{}, []string{"user_id"}, "user_id is required"},
		{&notifyv1.ListDevicesRequest{UserId: string(make([]byte, MaxUserIDLen+1))}, []string{"user_id"},
			"user_id must be at most 128 characters"},
		{&notifyv1.ListDevicesRequest{UserId: "ana", PageSize: -1, PageToken: "not a token"}, []string{"page_size", "page_token"},
			"page_size must not be negative"},
	} {
		_, err := s.ListDevices(ctx, tt.req)
		if diff := cmp.Diff(tt.want, badFields(t, err)); diff != "" {
			t.Errorf("ListDevices(%v) fields (-want +got):\n%s", tt.req, diff)
		}
		if got := status.Convert(err).Message(); got != "invalid request: "+tt.message {
			t.Errorf("ListDevices(%v) message %q, want %q", tt.req, got, "invalid request: "+tt.message)
		}
	}
}

// CheckDevice and UnregisterDevice refuse ids longer than RegisterDevice accepts, naming the
// field, and change nothing, even for a device stored with such ids (inserted here directly, as
// no RPC can).
func TestDeviceRequestLimits(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	s := NewDevices(db.Pool, discard, prometheus.NewRegistry())
	longUser, longDevice := strings.Repeat("u", MaxUserIDLen+1), strings.Repeat("d", MaxDeviceIDLen+1)
	if _, err := db.Pool.Exec(ctx, `INSERT INTO devices (device_id, user_id, token, platform, last_seen_at)
		VALUES ($1, $2, 'tok', 'android', now() - interval '2 hours')`, longDevice, longUser); err != nil {
		t.Fatal(err)
	}
	stored := func() string {
		t.Helper()
		var row string
		if err := db.Pool.QueryRow(ctx, `SELECT format('%s %s %s %s', active, last_seen_at, deactivated_at, deactivation_reason)
			FROM devices WHERE device_id = $1`, longDevice).Scan(&row); err != nil {
			t.Fatal(err)
		}
		return row
	}
	before := stored()

	for _, tt := range []struct {
		name string
		call func() error
		want []string
	}{
		{"UnregisterDevice(long device_id)", func() error {
			_, err := s.UnregisterDevice(ctx, &notifyv1.UnregisterDeviceRequest{DeviceId: longDevice})
			return err
		}, []string{"device_id"}},
		{"CheckDevice(long user_id, long device_id)", func() error {
			_, err := s.CheckDevice(ctx, &notifyv1.CheckDeviceRequest{UserId: longUser, DeviceId: longDevice})
			return err
		}, []string{"user_id", "device_id"}},
		{"CheckDevice(long user_id)", func() error {
			_, err := s.CheckDevice(ctx, &notifyv1.CheckDeviceRequest{UserId: longUser, DeviceId: "phone"})
			return err
		}, []string{"user_id"}},
		{"CheckDevice(long device_id)", func() error {
			_, err := s.CheckDevice(ctx, &notifyv1.CheckDeviceRequest{UserId: "ana", DeviceId: longDevice})
			return err
		}, []string{"device_id"}},
	} {
		if diff := cmp.Diff(tt.want, badFields(t, tt.call())); diff != "" {
			t.Errorf("%s: fields (-want +got):\n%s", tt.name, diff)
		}
	}
	if after := stored(); after != before {
		t.Errorf("stored device changed by refused calls: %s, was %s", after, before)
	}

	// At the limits, both answer.
	user, device := longUser[:MaxUserIDLen], longDevice[:MaxDeviceIDLen]
	if resp, err := s.CheckDevice(ctx, &notifyv1.CheckDeviceRequest{UserId: user, DeviceId: device}); err != nil || resp.GetRegistered() {
		t.Errorf("CheckDevice at the limits = %v, %v; want not registered", resp, err)
	}
	if resp, err := s.UnregisterDevice(ctx, &notifyv1.UnregisterDeviceRequest{DeviceId: device}); err != nil || resp.GetFound() {
		t.Errorf("UnregisterDevice at the limits = %v, %v; want not found", resp, err)
	}
}
