package e2e

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"notify/pkg/fcmemu"
	notifyv1 "notify/proto/gen/notify/v1"
)

// lastPayload returns the message the emulator last received for token, decoded.
func (s *stack) lastPayload(token string) fcmemu.Message {
	s.t.Helper()
	var page struct {
		Messages []struct {
			Payload fcmemu.Message
		}
	}
	getJSON(s.t, s.emulatorURL+"/emulator/messages?limit=1&token="+token, &page)
	if len(page.Messages) != 1 {
		s.t.Fatalf("emulator has %d messages for %s, want 1", len(page.Messages), token)
	}
	return page.Messages[0].Payload
}

func apsOf(t *testing.T, m fcmemu.Message) map[string]any {
	t.Helper()
	if m.APNS == nil {
		t.Fatalf("message %+v has no apns block", m)
	}
	var p struct{ Aps map[string]any }
	if err := json.Unmarshal(m.APNS.Payload, &p); err != nil {
		t.Fatalf("apns payload %s: %v", m.APNS.Payload, err)
	}
	return p.Aps
}

// TestPlatformOptionsReachFCM publishes a notification with every platform option and a
// data-only one, and checks each option in the block FCM expects it in, as the emulator
// received it through the real SDK.
func TestPlatformOptionsReachFCM(t *testing.T) {
	s := newStack(t)
	s.start("fcm-emulator", nil)
	s.start("producer", nil)
	s.start("sender", nil)
	notifications, devices, admin := s.clients()
	registerOne(t, devices, "opt-visible", "opt-visible-token")
	registerOne(t, devices, "opt-silent", "opt-silent-token")

	visible, err := notifications.Publish(ctxT(t), &notifyv1.PublishRequest{
		Type:       "e2e.options",
		Recipients: &notifyv1.Recipients{Target: &notifyv1.Recipients_UserIds{UserIds: &notifyv1.UserIDs{UserIds: []string{"opt-visible"}}}},
		Content:    &notifyv1.Content{Title: "Boarding", Body: "Gate 12"},
		Options: &notifyv1.Options{
			Priority: notifyv1.Priority_PRIORITY_HIGH,
			Android: &notifyv1.AndroidOptions{ChannelId: "trips", Sound: "chime", Tag: "flight-7", ClickAction: "OPEN_TRIP",
				NotificationCount: proto.Int32(0), Visibility: notifyv1.AndroidVisibility_ANDROID_VISIBILITY_PUBLIC},
			Apns: &notifyv1.ApnsOptions{Sound: "default", Badge: proto.Int32(3), ThreadId: "trip-7", Category: "BOARDING",
				ContentAvailable: true, InterruptionLevel: notifyv1.InterruptionLevel_INTERRUPTION_LEVEL_TIME_SENSITIVE},
			Webpush: &notifyv1.WebpushOptions{Link: "https://example.com/trips/7"},
		},
	})
	if err != nil {
		t.Fatalf("Publish with platform options: %v", err)
	}
	silent, err := notifications.Publish(ctxT(t), &notifyv1.PublishRequest{
		Type:       "e2e.sync",
		Recipients: &notifyv1.Recipients{Target: &notifyv1.Recipients_UserIds{UserIds: &notifyv1.UserIDs{UserIds: []string{"opt-silent"}}}},
		Data:       map[string]string{"sync": "inbox"},
		Options:    &notifyv1.Options{Priority: notifyv1.Priority_PRIORITY_HIGH},
	})
	if err != nil {
		t.Fatalf("Publish data-only: %v", err)
	}
	for _, id := range []string{visible.GetNotificationId(), silent.GetNotificationId()} {
		if n := waitFinal(t, admin, id, time.Minute); n.GetStatus() != notifyv1.NotificationStatus_NOTIFICATION_STATUS_DELIVERED {
			t.Fatalf("notification %s ended %v %v, want DELIVERED", id, n.GetStatus(), n.GetCounts())
		}
	}

	got := s.lastPayload("opt-visible-token")
	zero := 0
	wantAndroid := &fcmemu.AndroidNotification{ChannelID: "trips", Sound: "chime", Tag: "flight-7", ClickAction: "OPEN_TRIP",
		NotificationCount: &zero, Visibility: "PUBLIC"}
	if got.Android == nil || got.Android.Priority != "high" {
		t.Fatalf("android block %+v, want high priority", got.Android)
	}
	if n := got.Android.Notification; n == nil || !reflect.DeepEqual(*wantAndroid, *n) {
		t.Errorf("android.notification = %+v, want %+v", n, wantAndroid)
	}
	wantAps := map[string]any{"sound": "default", "badge": float64(3), "thread-id": "trip-7", "category": "BOARDING",
		"content-available": float64(1), "interruption-level": "time-sensitive"}
	if aps := apsOf(t, got); !reflect.DeepEqual(wantAps, aps) {
		t.Errorf("apns aps = %v, want %v", aps, wantAps)
	}
	if h := got.APNS.Headers; h["apns-priority"] != "10" || h["apns-push-type"] != "alert" {
		t.Errorf("apns headers %v, want apns-priority 10 and apns-push-type alert", h)
	}
	if got.Webpush == nil || got.Webpush.FCMOptions == nil || got.Webpush.FCMOptions.Link != "https://example.com/trips/7" {
		t.Errorf("webpush block %+v, want fcm_options.link https://example.com/trips/7", got.Webpush)
	}

	// The data-only message is a background push: no notification, content-available, and
	// APNs priority 5 although high was asked (FCM refuses high-priority data messages to
	// Apple devices); Android keeps high.
	got = s.lastPayload("opt-silent-token")
	if got.Notification != nil || got.Data["sync"] != "inbox" || got.Android == nil || got.Android.Priority != "high" {
		t.Errorf("data-only message %+v, want no notification, the data, android priority high", got)
	}
	if aps := apsOf(t, got); !reflect.DeepEqual(map[string]any{"content-available": float64(1)}, aps) {
		t.Errorf("data-only aps = %v, want only content-available 1", aps)
	}
	if h := got.APNS.Headers; h["apns-priority"] != "5" || h["apns-push-type"] != "background" {
		t.Errorf("data-only apns headers %v, want apns-priority 5 and apns-push-type background", h)
	}

	// Bad values of the new fields are refused naming each field, and nothing is written.
	var before int
	if err := s.db.Pool.QueryRow(ctxT(t), "SELECT (SELECT count(*) FROM notifications) + (SELECT count(*) FROM outbox WHERE "+notStatusEvent+")").Scan(&before); err != nil {
		t.Fatal(err)
	}
	_, err = notifications.Publish(ctxT(t), &notifyv1.PublishRequest{
		Type:       "e2e.options",
		Recipients: &notifyv1.Recipients{Target: &notifyv1.Recipients_UserIds{UserIds: &notifyv1.UserIDs{UserIds: []string{"opt-visible"}}}},
		Content:    &notifyv1.Content{Title: "x"},
		Options: &notifyv1.Options{
			Android: &notifyv1.AndroidOptions{NotificationCount: proto.Int32(-1)},
			Apns:    &notifyv1.ApnsOptions{InterruptionLevel: 42},
			Webpush: &notifyv1.WebpushOptions{Link: "http://example.com/"},
		},
	})
	want := map[string]bool{"options.android.notification_count": true, "options.apns.interruption_level": true, "options.webpush.link": true}
	if fields := statusFields(err); !reflect.DeepEqual(want, fields) {
		t.Errorf("Publish with bad options = %v (%v), want INVALID_ARGUMENT on %v", err, fields, want)
	}
	var after int
	if err := s.db.Pool.QueryRow(ctxT(t), "SELECT (SELECT count(*) FROM notifications) + (SELECT count(*) FROM outbox WHERE "+notStatusEvent+")").Scan(&after); err != nil {
		t.Fatal(err)
	}
	if after != before {
		t.Errorf("a refused Publish wrote %d rows", after-before)
	}
}

// statusFields returns the fields an INVALID_ARGUMENT error's BadRequest detail names (nil
// for any other error).
func statusFields(err error) map[string]bool {
	st := status.Convert(err)
	if st.Code() != codes.InvalidArgument {
		return nil
	}
	fields := map[string]bool{}
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				fields[v.GetField()] = true
			}
		}
	}
	return fields
}
