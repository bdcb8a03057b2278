package server

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"notify/pkg/pgtest"
	"notify/pkg/schema"
	busv1 "notify/proto/gen/notify/bus/v1"
	notifyv1 "notify/proto/gen/notify/v1"
	"notify/services/producer/internal/outbox"
)

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

func validRequest() *notifyv1.PublishRequest {
	return &notifyv1.PublishRequest{
		Type:       "comment.created",
		Recipients: &notifyv1.Recipients{Target: &notifyv1.Recipients_UserIds{UserIds: &notifyv1.UserIDs{UserIds: []string{"u1"}}}},
		Content:    &notifyv1.Content{Title: "New comment", Body: "Ana replied"},
	}
}

// badFields returns the fields named by an INVALID_ARGUMENT error's BadRequest detail.
func badFields(t *testing.T, err error) []string {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.InvalidArgument {
		t.Fatalf("error = %v, want INVALID_ARGUMENT", err)
	}
	var fields []string
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				fields = append(fields, v.GetField())
			}
		}
	}
	if len(fields) == 0 {
		t.Fatalf("INVALID_ARGUMENT without BadRequest field violations: %v", err)
	}
	return fields
}

func TestValidatePublish(t *testing.T) {
	t.Parallel()
	tokens := make([]string, MaxRecipients+1)
	for i := range tokens {
		tokens[i] = "t"
	}
	tests := []struct {
		name   string
		modify func(*notifyv1.PublishRequest)
		want   []string
	}{
		{"valid", func(*notifyv1.PublishRequest) {}, nil},
		{"no type", func(r *notifyv1.PublishRequest) { r.Type = "" }, []string{"type"}},
		{"bad type", func(r *notifyv1.PublishRequest) { r.Type = "a b" }, []string{"type"}},
		{"no recipients", func(r *notifyv1.PublishRequest) { r.Recipients = nil }, []string{"recipients"}},
		{"empty user list", func(r *notifyv1.PublishRequest) {
			r.Recipients.Target = &notifyv1.Recipients_UserIds{UserIds: &notifyv1.UserIDs{}}
		}, []string{"recipients.user_ids.user_ids"}},
		{"too many tokens", func(r *notifyv1.PublishRequest) {
			r.Recipients.Target = &notifyv1.Recipients_Tokens{Tokens: &notifyv1.Tokens{Tokens: tokens}}
		}, []string{"recipients.tokens.tokens"}},
		{"empty token", func(r *notifyv1.PublishRequest) {
			r.Recipients.Target = &notifyv1.Recipients_Tokens{Tokens: &notifyv1.Tokens{Tokens: []string{"a", ""}}}
		}, []string{"recipients.tokens.tokens[1]"}},
		{"broadcast", func(r *notifyv1.PublishRequest) {
			r.Recipients.Target = &notifyv1.Recipients_AllDevices{AllDevices: &notifyv1.AllDevices{}}
		}, nil},
		{"nothing to show", func(r *notifyv1.PublishRequest) { r.Content = nil }, []string{"content"}},
		{"data only", func(r *notifyv1.PublishRequest) { r.Content = nil; r.Data = map[string]string{"k": "v"} }, nil},
		{"reserved keys", func(r *notifyv1.PublishRequest) {
			r.Data = map[string]string{"from": "x", "google.x": "y", "gcm.n": "z", "message_type": "m", "ok": "1"}
		}, []string{"data[from]", "data[gcm.n]", "data[google.x]", "data[message_type]"}},
		{"payload over 4096 bytes", func(r *notifyv1.PublishRequest) { r.Content.Body = strings.Repeat("x", 4096) }, []string{"content"}},
		{"ttl over 28 days", func(r *notifyv1.PublishRequest) {
			r.Options = &notifyv1.Options{Ttl: durationpb.New(MaxTTL + 1)}
		}, []string{"options.ttl"}},
		{"negative ttl", func(r *notifyv1.PublishRequest) { r.Options = &notifyv1.Options{Ttl: durationpb.New(-1)} }, []string{"options.ttl"}},
		{"image not https", func(r *notifyv1.PublishRequest) { r.Content.ImageUrl = "http://x/y.png" }, []string{"content.image_url"}},
		{"unknown priority", func(r *notifyv1.PublishRequest) { r.Options = &notifyv1.Options{Priority: 7} }, []string{"options.priority"}},
		{"long collapse key", func(r *notifyv1.PublishRequest) {
			r.Options = &notifyv1.Options{CollapseKey: strings.Repeat("c", 65)}
		}, []string{"options.collapse_key"}},
		{"topic", func(r *notifyv1.PublishRequest) {
			r.Recipients.Target = &notifyv1.Recipients_Topic{Topic: "news-1_a.b~c%20"}
		}, nil},
		{"/topics/ topic", func(r *notifyv1.PublishRequest) {
			r.Recipients.Target = &notifyv1.Recipients_Topic{Topic: "/topics/news"}
		}, nil},
		{"empty topic", func(r *notifyv1.PublishRequest) { r.Recipients.Target = &notifyv1.Recipients_Topic{Topic: "/topics/"} }, []string{"recipients.topic"}},
		{"bad topic", func(r *notifyv1.PublishRequest) {
			r.Recipients.Target = &notifyv1.Recipients_Topic{Topic: "news today"}
		}, []string{"recipients.topic"}},
		{"long topic", func(r *notifyv1.PublishRequest) {
			r.Recipients.Target = &notifyv1.Recipients_Topic{Topic: strings.Repeat("t", MaxTopicLen+1)}
		}, []string{"recipients.topic"}},
		{"condition", func(r *notifyv1.PublishRequest) {
			r.Recipients.Target = &notifyv1.Recipients_Condition{Condition: "'a' in topics && ('b' in topics || !('c' in topics))"}
		}, nil},
		{"condition of six topics", func(r *notifyv1.PublishRequest) {
			r.Recipients.Target = &notifyv1.Recipients_Condition{Condition: "'a' in topics || 'b' in topics || 'c' in topics || 'd' in topics || 'e' in topics || 'f' in topics"}
		}, []string{"recipients.condition"}},
		{"bad condition", func(r *notifyv1.PublishRequest) {
			r.Recipients.Target = &notifyv1.Recipients_Condition{Condition: "news"}
		}, []string{"recipients.condition"}},
		{"empty condition", func(r *notifyv1.PublishRequest) { r.Recipients.Target = &notifyv1.Recipients_Condition{} }, []string{"recipients.condition"}},
		{"condition naming a bad topic", func(r *notifyv1.PublishRequest) {
			r.Recipients.Target = &notifyv1.Recipients_Condition{Condition: "'news today' in topics"}
		}, []string{"recipients.condition"}},
		{"long condition", func(r *notifyv1.PublishRequest) {
			r.Recipients.Target = &notifyv1.Recipients_Condition{Condition: "'" + strings.Repeat("t", MaxConditionLen) + "' in topics"}
		}, []string{"recipients.condition"}},
		{"a token that reads as a topic", func(r *notifyv1.PublishRequest) {
			r.Recipients.Target = &notifyv1.Recipients_Tokens{Tokens: &notifyv1.Tokens{Tokens: []string{"ok", "/topics/news", "condition:'a' in topics"}}}
		}, []string{"recipients.tokens.tokens[1]", "recipients.tokens.tokens[2]"}},
		{"every platform option", func(r *notifyv1.PublishRequest) { r.Options = allPlatformOptions() }, nil},
		{"platform options on an image-only notification", func(r *notifyv1.PublishRequest) {
			r.Content = &notifyv1.Content{ImageUrl: "https://example.com/i.png"}
			r.Data = map[string]string{"k": "v"}
			r.Options = allPlatformOptions()
		}, nil},
		{"data only with content_available", func(r *notifyv1.PublishRequest) {
			r.Content, r.Data = nil, map[string]string{"sync": "1"}
			r.Options = &notifyv1.Options{Priority: notifyv1.Priority_PRIORITY_HIGH, Apns: &notifyv1.ApnsOptions{ContentAvailable: true}}
		}, nil},
		{"visible options on a data-only message", func(r *notifyv1.PublishRequest) {
			r.Content, r.Data = nil, map[string]string{"sync": "1"}
			r.Options = allPlatformOptions()
		}, []string{
			"options.android.channel_id", "options.android.sound", "options.android.tag", "options.android.click_action",
			"options.android.notification_count", "options.android.visibility",
			"options.apns.sound", "options.apns.badge", "options.apns.thread_id", "options.apns.category",
			"options.apns.interruption_level", "options.webpush.link",
		}},
		{"bad platform values", func(r *notifyv1.PublishRequest) {
			long := strings.Repeat("c", MaxOptionLen+1)
			r.Options = &notifyv1.Options{
				Android: &notifyv1.AndroidOptions{ChannelId: long, Sound: long, Tag: long, ClickAction: long,
					NotificationCount: proto.Int32(-1), Visibility: 9},
				Apns: &notifyv1.ApnsOptions{Sound: long, Badge: proto.Int32(-2), ThreadId: long, Category: long,
					InterruptionLevel: 7},
				Webpush: &notifyv1.WebpushOptions{Link: "http://example.com/inbox"},
			}
		}, []string{
			"options.android.channel_id", "options.android.sound", "options.android.tag", "options.android.click_action",
			"options.android.notification_count", "options.android.visibility",
			"options.apns.sound", "options.apns.badge", "options.apns.thread_id", "options.apns.category",
			"options.apns.interruption_level", "options.webpush.link",
		}},
		{"relative link", func(r *notifyv1.PublishRequest) {
			r.Options = &notifyv1.Options{Webpush: &notifyv1.WebpushOptions{Link: "/inbox"}}
		}, []string{"options.webpush.link"}},
		{"long link", func(r *notifyv1.PublishRequest) {
			r.Options = &notifyv1.Options{Webpush: &notifyv1.WebpushOptions{Link: "https://example.com/" + strings.Repeat("x", MaxLinkLen)}}
		}, []string{"options.webpush.link"}},
		{"options count against the payload", func(r *notifyv1.PublishRequest) {
			r.Content.Body = strings.Repeat("x", 3900)
			r.Options = allPlatformOptions()
			r.Options.Android.ClickAction = strings.Repeat("a", MaxOptionLen)
		}, []string{"content"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			req := validRequest()
			tt.modify(req)
			var got []string
			for _, v := range validatePublish(req) {
				got = append(got, v.GetField())
			}
			// Map iteration makes data violations unordered.
			if diff := cmp.Diff(tt.want, got, cmpSorted); diff != "" {
				t.Errorf("violations (-want +got):\n%s", diff)
			}
		})
	}
}

// TestViolationMessagesRead: an INVALID_ARGUMENT's message is the first violation's field
// followed by its description, so every description reads on from the field ("content
// needs …", not "content a notification needs …").
func TestViolationMessagesRead(t *testing.T) {
	t.Parallel()
	f := newAppsFixture(t)
	ctx := WithCaller(context.Background(), "orders")
	publish := func(modify func(*notifyv1.PublishRequest)) func() error {
		return func() error {
			req := validRequest()
			modify(req)
			_, err := f.pub.Publish(ctx, req)
			return err
		}
	}
	for _, tt := range []struct {
		call func() error
		want string
	}{
		{publish(func(r *notifyv1.PublishRequest) { r.Recipients = nil }),
			"recipients is required: one of user_ids, all_devices, tokens, topic or condition"},
		{publish(func(r *notifyv1.PublishRequest) { r.Content = nil }),
			"content needs a title or a body, unless data is set"},
		{publish(func(r *notifyv1.PublishRequest) { r.Data = map[string]string{"from": "x"} }),
			"data[from] is reserved by FCM"},
		{publish(func(r *notifyv1.PublishRequest) { r.Options = &notifyv1.Options{Priority: 77} }),
			"options.priority is 77, not a known priority"},
		{publish(func(r *notifyv1.PublishRequest) { r.Content.Body = strings.Repeat("x", 4096) }),
			"content makes an FCM payload (with data and platform options) of 4146 bytes; FCM accepts at most 4096"},
		{publish(func(r *notifyv1.PublishRequest) {
			r.Options = &notifyv1.Options{Android: &notifyv1.AndroidOptions{Visibility: 9}}
		}), "options.android.visibility is 9, not a known visibility"},
		{publish(func(r *notifyv1.PublishRequest) {
			r.Options = &notifyv1.Options{Apns: &notifyv1.ApnsOptions{InterruptionLevel: 9}}
		}), "options.apns.interruption_level is 9, not a known interruption level"},
		{publish(func(r *notifyv1.PublishRequest) { r.App = "shop" }),
			`app is "shop", not a known app; the apps are: default, staff`},
		{func() error {
			_, err := f.admin.ListNotifications(ctxOps, &notifyv1.ListNotificationsRequest{Status: 99})
			return err
		}, "status is 99, not a known status"},
		{func() error {
			_, err := f.admin.GetNotification(ctxOps, &notifyv1.GetNotificationRequest{
				NotificationId: "01a22edc-293e-7cb1-855e-642bd9ac4612", Outcome: 99})
			return err
		}, "outcome is 99, not a known outcome"},
		{func() error {
			_, err := f.admin.Replay(ctxOps, &notifyv1.ReplayRequest{})
			return err
		}, "selector is required: one of notification_ids or dead_letters"},
		{func() error {
			_, err := f.admin.CreateAPIKey(ctxOps, &notifyv1.CreateAPIKeyRequest{Name: "root", Role: notifyv1.Role_ROLE_ADMIN, Apps: []string{"staff"}})
			return err
		}, "apps must be empty for an admin key: admin keys are never limited to apps; limit publisher keys"},
		{func() error {
			_, err := f.admin.CreateAPIKey(ctxOps, &notifyv1.CreateAPIKeyRequest{Name: "root", Role: notifyv1.Role_ROLE_ADMIN, AllowIgnorePreferences: true})
			return err
		}, "allow_ignore_preferences must not be set for an admin key: admin keys may always ignore preferences; " +
			"the permission is for publisher keys"},
	} {
		err := tt.call()
		if st := status.Convert(err); st.Code() != codes.InvalidArgument || st.Message() != "invalid request: "+tt.want {
			t.Errorf("got %v, want INVALID_ARGUMENT: invalid request: %s", err, tt.want)
		}
	}
}

// TestTTLOutOfRangeMessage: the refusal of an options.ttl out of range states the Duration
// given, also for the longest and shortest there are (where AsDuration saturates).
func TestTTLOutOfRangeMessage(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		ttl  *durationpb.Duration
		want string
	}{
		{durationpb.New(29 * 24 * time.Hour), "2505600s"},
		{&durationpb.Duration{Seconds: 315_576_000_000}, "315576000000s"},
		{&durationpb.Duration{Seconds: 315_576_000_000, Nanos: 999_999_999}, "315576000000.999999999s"},
		{&durationpb.Duration{Seconds: -315_576_000_000}, "-315576000000s"},
		{&durationpb.Duration{Nanos: -500_000_000}, "-0.5s"},
		{&durationpb.Duration{}, "0s"},
	} {
		req := validRequest()
		req.Options = &notifyv1.Options{Ttl: tt.ttl}
		var got []string
		for _, fv := range validatePublish(req) {
			got = append(got, fv.GetField()+": "+fv.GetDescription())
		}
		want := []string{"options.ttl: must be more than 0 and at most 28 days (2419200s), got " + tt.want}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("ttl %v (-want +got):\n%s", tt.ttl, diff)
		}
	}
}

// allPlatformOptions sets every platform option to a valid value.
func allPlatformOptions() *notifyv1.Options {
	return &notifyv1.Options{
		Android: &notifyv1.AndroidOptions{ChannelId: "trips", Sound: "chime", Tag: "t", ClickAction: "OPEN",
			NotificationCount: proto.Int32(0), Visibility: notifyv1.AndroidVisibility_ANDROID_VISIBILITY_SECRET},
		Apns: &notifyv1.ApnsOptions{Sound: "default", Badge: proto.Int32(0), ThreadId: "th", Category: "cat",
			ContentAvailable: true, InterruptionLevel: notifyv1.InterruptionLevel_INTERRUPTION_LEVEL_CRITICAL},
		Webpush: &notifyv1.WebpushOptions{Link: "https://example.com/inbox"},
	}
}

var cmpSorted = cmp.Transformer("sort", func(in []string) []string {
	out := append([]string(nil), in...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
})

func TestPublishWritesNotificationAndOutboxAtomically(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	s := NewNotifications(db.Pool, discard, prometheus.NewRegistry(), nil, GroupCommit{})

	req := validRequest()
	req.IdempotencyKey = "order-42-shipped"
	first, err := s.Publish(ctx, req)
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if first.GetDuplicate() || first.GetNotificationId() == "" {
		t.Fatalf("first Publish = %v, want a new id", first)
	}
	second, err := s.Publish(ctx, req)
	if err != nil {
		t.Fatalf("Publish again: %v", err)
	}
	if !second.GetDuplicate() || second.GetNotificationId() != first.GetNotificationId() {
		t.Errorf("repeated Publish = %v, want id %s with duplicate=true", second, first.GetNotificationId())
	}
	// Another caller may use the same key for its own notification.
	other, err := s.Publish(WithCaller(ctx, "orders"), req)
	if err != nil {
		t.Fatalf("Publish as other caller: %v", err)
	}
	if other.GetDuplicate() || other.GetNotificationId() == first.GetNotificationId() {
		t.Errorf("other caller's Publish = %v, want a new notification", other)
	}

	var notifications, outbox int
	if err := db.Pool.QueryRow(ctx, "SELECT (SELECT count(*) FROM notifications), (SELECT count(*) FROM outbox WHERE message_type <> 'notify.bus.v1.StatusEvent')").Scan(&notifications, &outbox); err != nil {
		t.Fatal(err)
	}
	if notifications != 2 || outbox != 2 {
		t.Errorf("rows: %d notifications, %d outbox, want 2 and 2 (one pair per accepted notification)", notifications, outbox)
	}
}

func TestPublishInvalidWritesNothing(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	s := NewNotifications(db.Pool, discard, prometheus.NewRegistry(), nil, GroupCommit{})
	rejected := func(reason string) float64 { return testutil.ToFloat64(s.rejected.WithLabelValues(reason)) }
	if n := testutil.CollectAndCount(s.rejected); n < 6 {
		t.Errorf("notify_publish_rejected_total has %d series before any call, want one per request field", n)
	}

	req := validRequest()
	req.Data = map[string]string{"google.sent_time": "1"}
	_, err := s.Publish(ctx, req)
	if diff := cmp.Diff([]string{"data[google.sent_time]"}, badFields(t, err)); diff != "" {
		t.Errorf("fields (-want +got):\n%s", diff)
	}
	if got := rejected("data"); got != 1 {
		t.Errorf(`notify_publish_rejected_total{reason="data"} = %v, want 1`, got)
	}
	if got := rejected("recipients"); got != 0 {
		t.Errorf(`notify_publish_rejected_total{reason="recipients"} = %v, want 0`, got)
	}
	var n int
	if err := db.Pool.QueryRow(ctx, "SELECT (SELECT count(*) FROM notifications) + (SELECT count(*) FROM outbox WHERE message_type <> 'notify.bus.v1.StatusEvent')").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("an invalid Publish wrote %d rows", n)
	}
}

func TestDevices(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	s := NewDevices(db.Pool, discard, prometheus.NewRegistry())
	android := notifyv1.Platform_PLATFORM_ANDROID

	register := func(user, device, token string) *notifyv1.RegisterDeviceResponse {
		t.Helper()
		resp, err := s.RegisterDevice(ctx, &notifyv1.RegisterDeviceRequest{UserId: user, DeviceId: device, Token: token, Platform: android})
		if err != nil {
			t.Fatalf("RegisterDevice(%s, %s): %v", user, device, err)
		}
		return resp
	}
	check := func(user, device string) bool {
		t.Helper()
		resp, err := s.CheckDevice(ctx, &notifyv1.CheckDeviceRequest{UserId: user, DeviceId: device})
		if err != nil {
			t.Fatalf("CheckDevice: %v", err)
		}
		return resp.GetRegistered()
	}

	if r := register("ana", "phone", "tok-1"); !r.GetCreated() {
		t.Errorf("first registration: %v, want created", r)
	}
	if r := register("ana", "phone", "tok-2"); r.GetCreated() || r.GetReactivated() {
		t.Errorf("new token for the same device: %v, want an update", r)
	}
	if !check("ana", "phone") {
		t.Error("CheckDevice after registration = false")
	}
	if check("bob", "phone") {
		t.Error("CheckDevice for another user = true")
	}

	// The token moves to the device that registered it last.
	register("bob", "tablet", "tok-2")
	if check("ana", "phone") {
		t.Error("CheckDevice = true for a device whose token moved to another device")
	}

	if resp, err := s.UnregisterDevice(ctx, &notifyv1.UnregisterDeviceRequest{DeviceId: "tablet"}); err != nil || !resp.GetFound() {
		t.Fatalf("UnregisterDevice = %v, %v", resp, err)
	}
	if check("bob", "tablet") {
		t.Error("CheckDevice after UnregisterDevice = true")
	}
	if r := register("bob", "tablet", "tok-2"); !r.GetReactivated() {
		t.Errorf("registering an unregistered device: %v, want reactivated", r)
	}
	if resp, _ := s.UnregisterDevice(ctx, &notifyv1.UnregisterDeviceRequest{DeviceId: "nobody"}); resp.GetFound() {
		t.Error("UnregisterDevice of an unknown device found it")
	}

	_, err := s.RegisterDevice(ctx, &notifyv1.RegisterDeviceRequest{UserId: "ana"})
	if diff := cmp.Diff([]string{"device_id", "token", "platform"}, badFields(t, err)); diff != "" {
		t.Errorf("fields (-want +got):\n%s", diff)
	}

	batch := &notifyv1.RegisterDevicesRequest{}
	for i := range 1000 {
		batch.Devices = append(batch.Devices, &notifyv1.Device{
			UserId: "user-" + string(rune('a'+i%26)), DeviceId: "bulk-" + strconv.Itoa(i), Token: "bulk-tok-" + strconv.Itoa(i), Platform: android,
		})
	}
	batch.Devices = append(batch.Devices, &notifyv1.Device{UserId: "ana", DeviceId: "phone", Token: "tok-3", Platform: android})
	resp, err := s.RegisterDevices(ctx, batch)
	if err != nil {
		t.Fatalf("RegisterDevices: %v", err)
	}
	if resp.GetCreated() != 1000 || resp.GetUpdated() != 1 {
		t.Errorf("RegisterDevices = %v, want 1000 created and 1 updated", resp)
	}
	if !check("ana", "phone") {
		t.Error("batch registration did not reactivate ana's phone")
	}
	dup := &notifyv1.RegisterDevicesRequest{Devices: []*notifyv1.Device{
		{UserId: "u", DeviceId: "d", Token: "t1", Platform: android},
		{UserId: "u", DeviceId: "d", Token: "t2", Platform: android},
	}}
	_, err = s.RegisterDevices(ctx, dup)
	if diff := cmp.Diff([]string{"devices[1].device_id"}, badFields(t, err)); diff != "" {
		t.Errorf("fields (-want +got):\n%s", diff)
	}
}

// TestPublishTaskCarriesACopyOfTheRequest: a small notification's SendTask carries a copy
// of its request, the same as the stored one (the sender reads the audience's first page
// from it in the round trip that loads the notification); a request larger than
// outbox.MaxTaskRequest is not copied.
func TestPublishTaskCarriesACopyOfTheRequest(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	s := NewNotifications(db.Pool, discard, prometheus.NewRegistry(), nil, GroupCommit{})
	small := validRequest()
	large := validRequest()
	for i := range 200 {
		large.Recipients = &notifyv1.Recipients{Target: &notifyv1.Recipients_UserIds{UserIds: &notifyv1.UserIDs{
			UserIds: append(large.GetRecipients().GetUserIds().GetUserIds(), fmt.Sprintf("user-with-a-long-id-%04d", i))}}}
	}
	if proto.Size(large) <= outbox.MaxTaskRequest {
		t.Fatalf("the large request is %d bytes, not over %d", proto.Size(large), outbox.MaxTaskRequest)
	}
	for _, tc := range []struct {
		name string
		req  *notifyv1.PublishRequest
		copy bool
	}{{"small", small, true}, {"large", large, false}} {
		resp, err := s.Publish(ctx, tc.req)
		if err != nil {
			t.Fatalf("%s: Publish: %v", tc.name, err)
		}
		var body, stored []byte
		if err := db.Pool.QueryRow(ctx, `SELECT o.body, n.request FROM outbox o JOIN notifications n ON n.id = o.notification_id
			WHERE o.notification_id = $1 AND o.message_type = 'notify.bus.v1.SendTask'`, resp.GetNotificationId()).Scan(&body, &stored); err != nil {
			t.Fatal(err)
		}
		var task busv1.SendTask
		if err := proto.Unmarshal(body, &task); err != nil {
			t.Fatal(err)
		}
		if task.GetNotificationId() != resp.GetNotificationId() || task.GetCause() != outbox.CausePublish || task.GetGeneration() != 0 {
			t.Errorf("%s: task %v", tc.name, &task)
		}
		if !tc.copy {
			if task.GetRequest() != nil {
				t.Errorf("%s: the task carries a copy of a %d-byte request", tc.name, proto.Size(tc.req))
			}
			continue
		}
		want, err := schema.DecodeRequest(stored)
		if err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(task.GetRequest(), want) || !proto.Equal(want, tc.req) {
			t.Errorf("%s: the task's copy %v differs from the stored request %v", tc.name, task.GetRequest(), want)
		}
	}
}
