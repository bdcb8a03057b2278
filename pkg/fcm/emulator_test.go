package fcm

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"notify/pkg/fcm/topic"
	"notify/pkg/fcmemu"
)

// These tests run the real SDK against the in-process FCM emulator.

func newEmulator(t testing.TB, cfg fcmemu.Config) (*fcmemu.Server, *Client) {
	t.Helper()
	emu := fcmemu.New(cfg)
	srv := httptest.NewServer(emu)
	t.Cleanup(srv.Close)
	return emu, emulatorClient(t, srv.URL, Config{})
}

// expected is what the emulator's token prefixes must be classified as.
var expected = map[string]outcome{
	"unregistered-": {"UNREGISTERED", "gone", 0},
	"invalid-":      {"INVALID_ARGUMENT", "gone", 0},
	"mismatch-":     {"SENDER_ID_MISMATCH", "gone", 0},
	"internal-":     {"INTERNAL", "transient", 0},
	"flaky1-":       {"INTERNAL", "transient", 0},
	"quota-":        {"QUOTA_EXCEEDED", "transient", 42 * time.Second},
	"unavailable-":  {"UNAVAILABLE", "transient", 3 * time.Minute},
	"autherr-":      {"THIRD_PARTY_AUTH_ERROR", "permanent", 0},
	"device-":       {"OK", "", 0},
}

func expectedFor(token string) outcome {
	for prefix, o := range expected {
		if strings.HasPrefix(token, prefix) {
			return o
		}
	}
	return outcome{Code: "no expectation for " + token}
}

func TestEmulatorMixed(t *testing.T) {
	t.Parallel()
	emu, c := newEmulator(t, fcmemu.Config{
		RetryAfter: 42 * time.Second,
		// Above the SDK's 2-minute cap, so it hands the 503 back instead of retrying it.
		UnavailableRetryAfter: 3 * time.Minute,
	})

	// 500 tokens, the failing kinds interleaved with deliverable ones.
	counts := []struct {
		prefix string
		n      int
	}{
		{"unregistered-", 25}, {"invalid-", 25}, {"mismatch-", 25}, {"internal-", 25},
		{"flaky1-", 25}, {"quota-", 25}, {"unavailable-", 2}, {"autherr-", 25}, {"device-", 323},
	}
	var toks []string
	for round := 0; len(toks) < MaxMulticast; round++ {
		for _, k := range counts {
			if round < k.n {
				toks = append(toks, fmt.Sprintf("%s%03d", k.prefix, round))
			}
		}
	}
	if len(toks) != MaxMulticast {
		t.Fatalf("built %d tokens, want %d", len(toks), MaxMulticast)
	}

	res, err := c.SendMulticast(t.Context(), Message{Title: "Hello", Body: "World"}, toks)
	if err != nil {
		t.Fatalf("SendMulticast: %v", err)
	}
	type row struct {
		Token   string
		Outcome outcome
	}
	var want, got []row
	for i, r := range res {
		want = append(want, row{toks[i], expectedFor(toks[i])})
		got = append(got, row{r.Token, outcomeOf(r.Err)})
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("results (-want +got):\n%s", diff)
	}

	// Every delivered token's MessageID is the name the emulator answered it with.
	ids := make(map[string]string)
	for _, rec := range emu.Messages(0) {
		if rec.MessageID != "" {
			ids[rec.Token] = rec.MessageID
		}
	}
	for _, r := range res {
		if r.Err == nil && (r.MessageID == "" || r.MessageID != ids[r.Token]) {
			t.Errorf("token %s: MessageID %q, emulator answered %q", r.Token, r.MessageID, ids[r.Token])
		}
	}
	st := emu.Stats()
	if st.Requests != MaxMulticast || st.Delivered != 323 {
		t.Errorf("emulator saw %d requests, %d delivered; want %d, 323", st.Requests, st.Delivered, MaxMulticast)
	}

	// Sent again later, only the transient failures: the flaky ones now go through.
	var retry []string
	for _, r := range res {
		if errors.Is(r.Err, ErrTransient) {
			retry = append(retry, r.Token)
		}
	}
	res, err = c.SendMulticast(t.Context(), Message{Title: "Hello", Body: "World"}, retry)
	if err != nil {
		t.Fatalf("SendMulticast (retry): %v", err)
	}
	for _, r := range res {
		wantOK := strings.HasPrefix(r.Token, "flaky1-")
		if (r.Err == nil) != wantOK {
			t.Errorf("retry of %s: err %v, want delivered %t", r.Token, r.Err, wantOK)
		}
	}
}

// TestEmulatorSDKRetries503 documents that the SDK retries a 503 within the call (at once,
// then after 1, 2 and 4 s), so a short outage never reaches us.
func TestEmulatorSDKRetries503(t *testing.T) {
	t.Parallel()
	emu, c := newEmulator(t, fcmemu.Config{})
	res, err := c.SendMulticast(t.Context(), Message{Body: "b"}, []string{"flaky503x1-a"})
	if err != nil || res[0].Err != nil {
		t.Fatalf("SendMulticast = %v, %v; want delivered", res, err)
	}
	if got := emu.Token("flaky503x1-a"); got.Received != 2 || got.Delivered != 1 {
		t.Errorf("emulator token stats %+v, want received 2, delivered 1", got)
	}
}

func TestEmulatorRefusesWithoutIO(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		tokens []string
		m      Message
		want   outcome
	}{
		{"501 tokens", tokens("device-", MaxMulticast+1), Message{Body: "b"}, outcome{"INVALID_REQUEST", "permanent", 0}},
		{"no tokens", nil, Message{Body: "b"}, outcome{"INVALID_REQUEST", "permanent", 0}},
		{"bad image URL", tokens("device-", 3), Message{Body: "b", ImageURL: "not a url"}, outcome{"INVALID_MESSAGE", "permanent", 0}},
		{"negative TTL", tokens("device-", 3), Message{Body: "b", TTL: -time.Second}, outcome{"INVALID_MESSAGE", "permanent", 0}},
		// One token, and more than sendEach takes: the SDK's own multicast.
		{"bad image URL, one token", tokens("device-", 1), Message{Body: "b", ImageURL: "not a url"}, outcome{"INVALID_MESSAGE", "permanent", 0}},
		{"bad image URL, 60 tokens", tokens("device-", 60), Message{Body: "b", ImageURL: "not a url"}, outcome{"INVALID_MESSAGE", "permanent", 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			emu, c := newEmulator(t, fcmemu.Config{})
			res, err := c.SendMulticast(t.Context(), tt.m, tt.tokens)
			if diff := cmp.Diff(tt.want, outcomeOf(err)); diff != "" {
				t.Errorf("error (-want +got):\n%s\nerror: %v", diff, err)
			}
			if res != nil {
				t.Errorf("got %d results, want none", len(res))
			}
			if n := emu.Stats().Requests; n != 0 {
				t.Errorf("emulator received %d requests, want 0", n)
			}
		})
	}
}

// TestEmulatorRefusesOneToken: a token the SDK refuses (an empty one) among others that it
// sends fails alone, permanently, and the others are delivered and keep their results.
func TestEmulatorRefusesOneToken(t *testing.T) {
	t.Parallel()
	emu, c := newEmulator(t, fcmemu.Config{})
	res, err := c.SendMulticast(t.Context(), Message{Body: "b"}, []string{"device-a", "", "device-b"})
	if err != nil {
		t.Fatalf("SendMulticast: %v", err)
	}
	got := make([]outcome, len(res))
	for i, r := range res {
		got[i] = outcomeOf(r.Err)
	}
	want := []outcome{outcomeOf(nil), {"INVALID_MESSAGE", "permanent", 0}, outcomeOf(nil)}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("outcomes (-want +got):\n%s", diff)
	}
	if n := emu.Stats().Requests; n != 2 {
		t.Errorf("emulator received %d requests, want 2", n)
	}
}

// TestEmulatorAudience sends a 1,201-token audience the way the sender does: chunked, the
// chunks concurrently.
func TestEmulatorAudience(t *testing.T) {
	t.Parallel()
	emu, c := newEmulator(t, fcmemu.Config{})
	audience := tokens("device-", 1201)

	chunks := slices.Collect(slices.Chunk(audience, MaxMulticast))
	var calls atomic.Int32
	results := make([][]Result, len(chunks))
	errs := make([]error, len(chunks))
	var wg sync.WaitGroup
	for i, chunk := range chunks {
		wg.Go(func() {
			calls.Add(1)
			results[i], errs[i] = c.SendMulticast(t.Context(), Message{Title: "Sale"}, chunk)
		})
	}
	wg.Wait()

	delivered := 0
	for i := range chunks {
		if errs[i] != nil {
			t.Errorf("chunk %d: %v", i, errs[i])
		}
		for _, r := range results[i] {
			if r.Err == nil {
				delivered++
			}
		}
	}
	if n := calls.Load(); n != 3 {
		t.Errorf("%d SendMulticast calls, want 3", n)
	}
	if delivered != 1201 {
		t.Errorf("%d results delivered, want 1201", delivered)
	}
	st := emu.Stats()
	if st.Requests != 1201 || st.Delivered != 1201 {
		t.Errorf("emulator: %d requests, %d delivered; want 1201 each", st.Requests, st.Delivered)
	}
	for _, tok := range audience {
		if got := st.Tokens[tok]; got.Received != 1 || got.Delivered != 1 {
			t.Errorf("token %s: %+v, want received and delivered once", tok, got)
		}
	}
}

// TestEmulatorPayload checks what reaches FCM after the SDK serialised our request.
func TestEmulatorPayload(t *testing.T) {
	t.Parallel()
	emu, c := newEmulator(t, fcmemu.Config{})
	before := time.Now().Unix()
	m := Message{
		Title: "Order shipped", Body: "On its way", ImageURL: "https://img.example/1.png",
		Data: map[string]string{"order_id": "42"}, Priority: PriorityHigh,
		TTL: time.Hour, CollapseKey: "order-42",
	}
	res, err := c.SendMulticast(t.Context(), m, []string{"device-1"})
	if err != nil || res[0].Err != nil {
		t.Fatalf("SendMulticast = %+v, %v", res, err)
	}
	recs := emu.Messages(0)
	if len(recs) != 1 {
		t.Fatalf("emulator kept %d messages, want 1", len(recs))
	}
	got := recs[0].Message

	exp, err := strconv.ParseInt(got.APNS.Headers["apns-expiration"], 10, 64)
	if err != nil || exp < before+3600 || exp > time.Now().Unix()+3600 {
		t.Errorf("apns-expiration %q, want now+3600", got.APNS.Headers["apns-expiration"])
	}
	delete(got.APNS.Headers, "apns-expiration")
	var aps map[string]any
	if err := json.Unmarshal(got.APNS.Payload, &aps); err != nil {
		t.Errorf("apns payload %s: %v", got.APNS.Payload, err)
	}
	got.APNS.Payload = nil

	want := fcmemu.Message{
		Token:        "device-1",
		Notification: &fcmemu.Notification{Title: "Order shipped", Body: "On its way", Image: "https://img.example/1.png"},
		Data:         map[string]string{"order_id": "42"},
		Android: &fcmemu.AndroidConfig{
			CollapseKey: "order-42", Priority: "high", TTL: "3600s",
			Notification: &fcmemu.AndroidNotification{Image: "https://img.example/1.png"},
		},
		APNS: &fcmemu.APNSConfig{
			Headers:    map[string]string{"apns-priority": "10", "apns-collapse-id": "order-42", "apns-push-type": "alert"},
			FCMOptions: &fcmemu.APNSFCMOptions{Image: "https://img.example/1.png"},
		},
		Webpush: &fcmemu.WebpushConfig{Headers: map[string]string{"Urgency": "high", "TTL": "3600", "Topic": "order-42"}},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("message FCM received (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[string]any{"aps": map[string]any{"mutable-content": float64(1)}}, aps); diff != "" {
		t.Errorf("apns payload (-want +got):\n%s", diff)
	}
}

// TestEmulatorPlatformOptions checks that every platform option, and the background form of
// a data-only message, reach FCM in their blocks after the SDK serialised them.
func TestEmulatorPlatformOptions(t *testing.T) {
	t.Parallel()
	emu, c := newEmulator(t, fcmemu.Config{})
	one := 1
	visible := Message{
		Title: "Flight", Body: "Boarding", Priority: PriorityHigh,
		Android: AndroidOptions{ChannelID: "trips", Sound: "chime", Tag: "flight-7", ClickAction: "OPEN_TRIP",
			NotificationCount: &one, Visibility: "PUBLIC"},
		APNS: APNSOptions{Sound: "default", Badge: &one, ThreadID: "trip-7", Category: "BOARDING",
			ContentAvailable: true, InterruptionLevel: "time-sensitive"},
		Webpush: WebpushOptions{Link: "https://example.com/trips/7"},
	}
	dataOnly := Message{Data: map[string]string{"sync": "1"}, Priority: PriorityHigh}
	for tok, m := range map[string]Message{"visible": visible, "data-only": dataOnly} {
		if res, err := c.SendMulticast(t.Context(), m, []string{tok}); err != nil || res[0].Err != nil {
			t.Fatalf("SendMulticast %s = %+v, %v", tok, res, err)
		}
	}
	byToken := map[string]fcmemu.Message{}
	for _, r := range emu.Messages(0) {
		byToken[r.Token] = r.Message
	}

	got := byToken["visible"]
	wantAndroid := &fcmemu.AndroidNotification{ChannelID: "trips", Sound: "chime", Tag: "flight-7",
		ClickAction: "OPEN_TRIP", NotificationCount: &one, Visibility: "PUBLIC"}
	if diff := cmp.Diff(wantAndroid, got.Android.Notification); diff != "" {
		t.Errorf("android.notification (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[string]any{"aps": map[string]any{
		"sound": "default", "badge": float64(1), "thread-id": "trip-7", "category": "BOARDING",
		"content-available": float64(1), "interruption-level": "time-sensitive",
	}}, apsOf(t, got)); diff != "" {
		t.Errorf("visible apns payload (-want +got):\n%s", diff)
	}
	if h := got.APNS.Headers; h["apns-priority"] != "10" || h["apns-push-type"] != "alert" {
		t.Errorf("visible apns headers %v, want priority 10, push type alert", h)
	}
	if got.Webpush.FCMOptions == nil || got.Webpush.FCMOptions.Link != visible.Webpush.Link {
		t.Errorf("webpush.fcm_options = %+v, want link %s", got.Webpush.FCMOptions, visible.Webpush.Link)
	}

	got = byToken["data-only"]
	if got.Notification != nil || got.Android.Notification != nil || got.Android.Priority != "high" {
		t.Errorf("data-only message: notification %+v, android %+v; want none, high priority", got.Notification, got.Android)
	}
	if diff := cmp.Diff(map[string]any{"aps": map[string]any{"content-available": float64(1)}}, apsOf(t, got)); diff != "" {
		t.Errorf("data-only apns payload (-want +got):\n%s", diff)
	}
	if h := got.APNS.Headers; h["apns-priority"] != "5" || h["apns-push-type"] != "background" {
		t.Errorf("data-only apns headers %v, want priority 5, push type background", h)
	}
}

func apsOf(t *testing.T, m fcmemu.Message) map[string]any {
	t.Helper()
	var aps map[string]any
	if err := json.Unmarshal(m.APNS.Payload, &aps); err != nil {
		t.Errorf("apns payload %s: %v", m.APNS.Payload, err)
	}
	return aps
}

// TestEmulatorPayloadErrorIsNotTokenGone: FCM answers a bad payload with INVALID_ARGUMENT,
// the code it also uses for bad tokens. Taking it for a dead token would deactivate the
// whole audience.
func TestEmulatorPayloadErrorIsNotTokenGone(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		m    Message
	}{
		{"reserved data key", Message{Body: "b", Data: map[string]string{"from": "x"}}},
		{"TTL over 28 days", Message{Body: "b", TTL: 29 * 24 * time.Hour}},
		{"payload too big", Message{Body: strings.Repeat("x", 5000)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, c := newEmulator(t, fcmemu.Config{})
			res, err := c.SendMulticast(t.Context(), tt.m, tokens("device-", 3))
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range res {
				if diff := cmp.Diff(outcome{"INVALID_ARGUMENT", "permanent", 0}, outcomeOf(r.Err)); diff != "" {
					t.Errorf("token %s (-want +got):\n%s\nerror: %v", r.Token, diff, r.Err)
				}
			}
		})
	}
}

// tokens returns n distinct tokens starting with prefix.
func tokens(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s%04d", prefix, i)
	}
	return out
}

// TestEmulatorTopicsAndConditions: topic and condition keys among the tokens are sent as
// single messages to the topic or condition, each with its own result, in order.
func TestEmulatorTopicsAndConditions(t *testing.T) {
	t.Parallel()
	emu, c := newEmulator(t, fcmemu.Config{})
	cond := "'sports' in topics && !('muted' in topics)"
	keys := []string{topic.Key("news"), "device-1", topic.ConditionKey(cond), "unregistered-1"}
	res, err := c.SendMulticast(t.Context(), Message{Title: "Goal", Data: map[string]string{"k": "v"}}, keys)
	if err != nil {
		t.Fatalf("SendMulticast: %v", err)
	}
	for i, want := range []string{"OK", "OK", "OK", "UNREGISTERED"} {
		if res[i].Token != keys[i] || outcomeOf(res[i].Err).Code != want {
			t.Errorf("result %d = %+v, want %s for %s", i, res[i], want, keys[i])
		}
	}
	var topicMsg, condMsg *fcmemu.Message
	for _, r := range emu.Messages(0) {
		switch {
		case r.Message.Topic != "":
			topicMsg = &r.Message
		case r.Message.Condition != "":
			condMsg = &r.Message
		}
	}
	if topicMsg == nil || topicMsg.Topic != "news" || topicMsg.Token != "" || topicMsg.Notification.Title != "Goal" || topicMsg.Data["k"] != "v" {
		t.Errorf("topic message = %+v, want topic news with the notification and data", topicMsg)
	}
	if condMsg == nil || condMsg.Condition != cond || condMsg.Token != "" {
		t.Errorf("condition message = %+v, want condition %q", condMsg, cond)
	}

	// A failing topic send is classified like a token's: transient, retried by the caller.
	if err := emu.SetFailAll(fcmemu.Internal); err != nil {
		t.Fatal(err)
	}
	res, err = c.SendMulticast(t.Context(), Message{Body: "b"}, []string{topic.Key("news")})
	if err != nil || len(res) != 1 || outcomeOf(res[0].Err) != (outcome{"INTERNAL", "transient", 0}) {
		t.Errorf("topic send while FCM fails = %+v, %v; want one INTERNAL, transient result", res, err)
	}
}
