package main

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"notify/pkg/fcm"
	"notify/pkg/fcmemu"
	notifyv1 "notify/proto/gen/notify/v1"
)

// TestMemServer runs the in-memory push server as the bench starts it (memserverMain, from
// the environment the bench gives it) against an in-process emulator, through the real
// Firebase SDK: devices registered with RegisterDevices, notifications published with
// Publish (a duplicate idempotency key, an invalid request), each token received once by
// the emulator, and /stats counting every notification finished.
func TestMemServer(t *testing.T) {
	t.Parallel()
	emu := fcmemu.New(fcmemu.Config{})
	hs := httptest.NewServer(emu)
	t.Cleanup(hs.Close)

	grpcAddr, err := freeAddr()
	if err != nil {
		t.Fatal(err)
	}
	httpAddr, err := freeAddr()
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"FCM_ENDPOINT": hs.URL + "/v1", "FCM_MAX_CONCURRENT_SENDS": "2", "GRPC_ADDR": grpcAddr, "METRICS_ADDR": httpAddr}
	ctx, stop := context.WithCancel(t.Context())
	served := make(chan error, 1)
	go func() { served <- memserverMain(ctx, func(k string) string { return env[k] }, io.Discard) }()
	t.Cleanup(func() {
		stop()
		if err := <-served; err != nil {
			t.Errorf("memserverMain after its context ended: %v, want nil", err)
		}
	})
	mem := &memClient{url: "http://" + httpAddr + "/stats", hc: &http.Client{Timeout: 5 * time.Second}}
	waitFor(t, "the server to answer /stats", func() bool { _, err := mem.stats(ctx); return err == nil })

	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(bearer("ignored")))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	devices, notifications := notifyv1.NewDeviceServiceClient(conn), notifyv1.NewNotificationServiceClient(conn)

	// user 0 and user 1 have one device each, user 2 two; user 3 none.
	reg := &notifyv1.RegisterDevicesRequest{}
	for i, user := range []int{0, 1, 2, 2} {
		reg.Devices = append(reg.Devices, &notifyv1.Device{UserId: userID("memtest", user), DeviceId: deviceID("memtest", i),
			Token: deviceToken("memtest", i), Platform: notifyv1.Platform_PLATFORM_ANDROID})
	}
	if resp, err := devices.RegisterDevices(ctx, reg); err != nil || resp.GetCreated() != 4 {
		t.Fatalf("RegisterDevices = %v, %v; want 4 created", resp, err)
	}

	publish := func(user int, key string) *notifyv1.PublishResponse {
		t.Helper()
		req := oneUserRequest("memtest", "memtest", user)
		req.IdempotencyKey = key
		resp, err := notifications.Publish(ctx, req)
		if err != nil {
			t.Fatalf("Publish to user %d with key %q: %v", user, key, err)
		}
		return resp
	}
	first := publish(0, "k0")
	publish(1, "k1")
	again := publish(0, "k0")
	if again.GetNotificationId() != first.GetNotificationId() || !again.GetDuplicate() || first.GetDuplicate() {
		t.Errorf("the key k0 twice: %v then %v; want the same id, duplicate only the second time", first, again)
	}
	publish(2, "k2")
	publish(3, "") // no devices: finished with nothing to send

	bad := oneUserRequest("memtest", "memtest", 0)
	bad.Recipients, bad.Content, bad.Data = nil, nil, nil
	_, err = notifications.Publish(ctx, bad)
	var fields []string
	descriptions := map[string]string{}
	for _, d := range status.Convert(err).Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				fields = append(fields, v.GetField())
				descriptions[v.GetField()] = v.GetDescription()
			}
		}
	}
	if status.Code(err) != codes.InvalidArgument || !cmp.Equal(fields, []string{"recipients.user_ids.user_ids", "content"}) {
		t.Errorf("Publish without recipients or content: %v, violations %q; want INVALID_ARGUMENT naming both", err, fields)
	}
	// As the producer words it.
	if got, want := descriptions["content"], "needs a title or a body, unless data is set"; got != want {
		t.Errorf("Publish without content: content %q, want %q", got, want)
	}

	var got memStats
	waitFor(t, "every notification finished", func() bool {
		got, err = mem.stats(ctx)
		return err == nil && got.Finished == got.Accepted
	})
	want := memStats{Accepted: 4, Finished: 4, Delivered: 4, DeliveredTokens: 4}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("/stats (-want +got):\n%s", diff)
	}
	if s := emu.Stats(); s.Delivered != 4 || s.Requests != 4 {
		t.Errorf("the emulator received %d requests, %d delivered; want 4 and 4", s.Requests, s.Delivered)
	}
	for i := range 4 {
		if ts := emu.Token(deviceToken("memtest", i)); ts.Delivered != 1 || ts.Received != 1 {
			t.Errorf("token %d: received %d, delivered %d; want 1 each", i, ts.Received, ts.Delivered)
		}
	}
	for _, m := range emu.Messages(10) {
		if !strings.Contains(string(m.Body), benchTitle) {
			t.Errorf("message to %s without the notification's title: %s", m.Token, m.Body)
		}
	}
}

// TestMemServerSendFailures: a token FCM refuses is counted failed, and its notification
// finished and not delivered, so the bench can fail the run on it.
func TestMemServerSendFailures(t *testing.T) {
	t.Parallel()
	hs := httptest.NewServer(fcmemu.New(fcmemu.Config{FailAll: fcmemu.Unregistered}))
	t.Cleanup(hs.Close)
	client, err := fcm.New(t.Context(), fcm.Config{ProjectID: "memtest", Endpoint: hs.URL + "/v1"})
	if err != nil {
		t.Fatal(err)
	}
	s := newMemServer(client, 1)
	n := &memNotification{id: "n1", msg: fcm.FromRequest(oneUserRequest("memtest", "memfail", 0)),
		tokens: []string{deviceToken("memfail", 0)}, expiresAt: time.Now().Add(time.Hour)}
	s.send(t.Context(), n)
	want := memStats{Finished: 1, FailedTokens: 1, Failures: map[string]int64{"UNREGISTERED": 1}}
	if diff := cmp.Diff(want, s.stats()); diff != "" {
		t.Errorf("stats after a refused send (-want +got):\n%s", diff)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited a minute for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
