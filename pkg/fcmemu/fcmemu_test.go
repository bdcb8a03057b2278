package fcmemu_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	firebase "firebase.google.com/go/v4"
	"firebase.google.com/go/v4/errorutils"
	"firebase.google.com/go/v4/messaging"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"google.golang.org/api/option"

	"notify/pkg/fcmemu"
)

// emulator is an emulator behind a real HTTP server and a real SDK client pointed at it.
type emulator struct {
	*fcmemu.Server
	url    string
	client *messaging.Client
}

// start runs an emulator for the test. The SDK's messaging client takes its endpoint from
// option.WithEndpoint (transport.NewHTTPClient returns it and messaging.NewClient uses it
// for messages:send instead of https://fcm.googleapis.com/v1).
func start(t *testing.T, cfg fcmemu.Config) emulator {
	t.Helper()
	emu := fcmemu.New(cfg)
	srv := httptest.NewServer(emu)
	t.Cleanup(srv.Close)
	ctx := context.Background()
	app, err := firebase.NewApp(ctx, &firebase.Config{ProjectID: "demo"},
		option.WithEndpoint(srv.URL+"/v1"), option.WithoutAuthentication())
	if err != nil {
		t.Fatalf("new firebase app: %v", err)
	}
	client, err := app.Messaging(ctx)
	if err != nil {
		t.Fatalf("new messaging client: %v", err)
	}
	return emulator{Server: emu, url: srv.URL, client: client}
}

// noSDKRetry makes the SDK give up on the first 503: it skips retries whose Retry-After is
// beyond its 2-minute cap. Without it every UNAVAILABLE costs 5 requests and 7 s of backoff.
const noSDKRetry = 3 * time.Minute

// classify reports which SDK helpers recognise err; cmp.Diff against the expected set shows
// both a missing and a wrongly matching helper.
func classify(err error) map[string]bool {
	helpers := map[string]func(error) bool{
		"IsUnregistered":        messaging.IsUnregistered,
		"IsInvalidArgument":     messaging.IsInvalidArgument,
		"IsSenderIDMismatch":    messaging.IsSenderIDMismatch,
		"IsQuotaExceeded":       messaging.IsQuotaExceeded,
		"IsUnavailable":         messaging.IsUnavailable,
		"IsInternal":            messaging.IsInternal,
		"IsThirdPartyAuthError": messaging.IsThirdPartyAuthError,
		// The platform-wide codes, read from error.status.
		"errorutils.IsNotFound":          errorutils.IsNotFound,
		"errorutils.IsInvalidArgument":   errorutils.IsInvalidArgument,
		"errorutils.IsPermissionDenied":  errorutils.IsPermissionDenied,
		"errorutils.IsResourceExhausted": errorutils.IsResourceExhausted,
		"errorutils.IsUnavailable":       errorutils.IsUnavailable,
		"errorutils.IsInternal":          errorutils.IsInternal,
		"errorutils.IsUnauthenticated":   errorutils.IsUnauthenticated,
	}
	got := map[string]bool{}
	for name, is := range helpers {
		if is(err) {
			got[name] = true
		}
	}
	return got
}

// classes is what classify returns for each error code the emulator injects.
var classes = map[fcmemu.ErrorCode]map[string]bool{
	"":                         {},
	fcmemu.Unregistered:        {"IsUnregistered": true, "errorutils.IsNotFound": true},
	fcmemu.InvalidArgument:     {"IsInvalidArgument": true, "errorutils.IsInvalidArgument": true},
	fcmemu.SenderIDMismatch:    {"IsSenderIDMismatch": true, "errorutils.IsPermissionDenied": true},
	fcmemu.QuotaExceeded:       {"IsQuotaExceeded": true, "errorutils.IsResourceExhausted": true},
	fcmemu.Unavailable:         {"IsUnavailable": true, "errorutils.IsUnavailable": true},
	fcmemu.Internal:            {"IsInternal": true, "errorutils.IsInternal": true},
	fcmemu.ThirdPartyAuthError: {"IsThirdPartyAuthError": true, "errorutils.IsUnauthenticated": true},
}

// response is what the SDK exposes of an error's HTTP response.
type response struct {
	Status     int
	RetryAfter string
}

func responseOf(err error) response {
	r := errorutils.HTTPResponse(err)
	if r == nil {
		return response{}
	}
	return response{Status: r.StatusCode, RetryAfter: r.Header.Get("Retry-After")}
}

func TestSendTokenPrefixes(t *testing.T) {
	t.Parallel()
	emu := start(t, fcmemu.Config{UnavailableRetryAfter: noSDKRetry})
	tests := []struct {
		token    string
		wantCode fcmemu.ErrorCode
		wantResp response
	}{
		{"device-1", "", response{}},
		{"unregistered-1", fcmemu.Unregistered, response{Status: 404}},
		{"invalid-1", fcmemu.InvalidArgument, response{Status: 400}},
		{"mismatch-1", fcmemu.SenderIDMismatch, response{Status: 403}},
		{"quota-1", fcmemu.QuotaExceeded, response{Status: 429, RetryAfter: "30"}},
		{"unavailable-1", fcmemu.Unavailable, response{Status: 503, RetryAfter: "180"}},
		{"internal-1", fcmemu.Internal, response{Status: 500}},
		{"autherr-1", fcmemu.ThirdPartyAuthError, response{Status: 401}},
	}
	for _, tc := range tests {
		t.Run(tc.token, func(t *testing.T) {
			t.Parallel()
			name, err := emu.client.Send(t.Context(), &messaging.Message{
				Token:        tc.token,
				Notification: &messaging.Notification{Title: "hi", Body: "there"},
			})
			if diff := cmp.Diff(classes[tc.wantCode], classify(err)); diff != "" {
				t.Errorf("Send(%q) error %v classified (-want +got):\n%s", tc.token, err, diff)
			}
			if diff := cmp.Diff(tc.wantResp, responseOf(err)); diff != "" {
				t.Errorf("Send(%q) HTTP response (-want +got):\n%s", tc.token, diff)
			}
			if tc.wantCode == "" && !strings.HasPrefix(name, "projects/demo/messages/") {
				t.Errorf("Send(%q) = %q, want a name under projects/demo/messages/", tc.token, name)
			}
			// One request each: the SDK retries none of these (503 only because its
			// Retry-After is beyond the SDK's cap).
			want := fcmemu.TokenStats{Received: 1, Delivered: 1}
			if tc.wantCode != "" {
				want = fcmemu.TokenStats{Received: 1, Failures: 1, LastError: tc.wantCode}
			}
			if diff := cmp.Diff(want, emu.Token(tc.token)); diff != "" {
				t.Errorf("Token(%q) (-want +got):\n%s", tc.token, diff)
			}
		})
	}
}

// TestSDKRetriesUnavailable documents the SDK's own 503 handling: 4 retries after 0, 1, 2
// and 4 s when no Retry-After is sent. It takes 7 s, hence -short skips it.
func TestSDKRetriesUnavailable(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("takes 7 s of SDK backoff")
	}
	emu := start(t, fcmemu.Config{})
	_, err := emu.client.Send(t.Context(), &messaging.Message{Token: "unavailable-1"})
	if !messaging.IsUnavailable(err) {
		t.Errorf("Send(unavailable-1) = %v, want UNAVAILABLE", err)
	}
	if got := emu.Token("unavailable-1").Received; got != 5 {
		t.Errorf("unavailable-1 received %d requests, want 5 (1 + 4 SDK retries)", got)
	}
}

func TestFlaky(t *testing.T) {
	t.Parallel()
	emu := start(t, fcmemu.Config{})
	tests := []struct {
		token string
		want  []fcmemu.ErrorCode // per Send call
		// wantStats after all calls; Received > len(want) means the SDK retried.
		wantStats fcmemu.TokenStats
	}{
		{
			token:     "flaky3-a",
			want:      []fcmemu.ErrorCode{fcmemu.Internal, fcmemu.Internal, fcmemu.Internal, "", ""},
			wantStats: fcmemu.TokenStats{Received: 5, Delivered: 2, Failures: 3, LastError: fcmemu.Internal},
		},
		{
			token:     "flaky429x2-a",
			want:      []fcmemu.ErrorCode{fcmemu.QuotaExceeded, fcmemu.QuotaExceeded, ""},
			wantStats: fcmemu.TokenStats{Received: 3, Delivered: 1, Failures: 2, LastError: fcmemu.QuotaExceeded},
		},
		{
			// The SDK retries a 503 at once (its first backoff is 0 s), so one Send succeeds.
			token:     "flaky503x1-a",
			want:      []fcmemu.ErrorCode{""},
			wantStats: fcmemu.TokenStats{Received: 2, Delivered: 1, Failures: 1, LastError: fcmemu.Unavailable},
		},
		{
			token:     "flaky0-a",
			want:      []fcmemu.ErrorCode{""},
			wantStats: fcmemu.TokenStats{Received: 1, Delivered: 1},
		},
	}
	for _, tc := range tests {
		t.Run(tc.token, func(t *testing.T) {
			t.Parallel()
			for i, want := range tc.want {
				_, err := emu.client.Send(t.Context(), &messaging.Message{Token: tc.token})
				if diff := cmp.Diff(classes[want], classify(err)); diff != "" {
					t.Errorf("Send #%d: %v classified (-want +got):\n%s", i+1, err, diff)
				}
			}
			if diff := cmp.Diff(tc.wantStats, emu.Token(tc.token)); diff != "" {
				t.Errorf("Token(%q) (-want +got):\n%s", tc.token, diff)
			}
		})
	}
}

func TestFailAll(t *testing.T) {
	t.Parallel()
	for _, code := range fcmemu.ErrorCodes() {
		t.Run(string(code), func(t *testing.T) {
			t.Parallel()
			emu := start(t, fcmemu.Config{UnavailableRetryAfter: noSDKRetry})
			if err := emu.SetFailAll(code); err != nil {
				t.Fatalf("SetFailAll(%s): %v", code, err)
			}
			_, err := emu.client.Send(t.Context(), &messaging.Message{Token: "device-1"})
			if diff := cmp.Diff(classes[code], classify(err)); diff != "" {
				t.Errorf("Send while failing all with %s: %v classified (-want +got):\n%s", code, err, diff)
			}
			if err := emu.SetFailAll(""); err != nil {
				t.Fatalf("SetFailAll(\"\"): %v", err)
			}
			if _, err := emu.client.Send(t.Context(), &messaging.Message{Token: "device-1"}); err != nil {
				t.Errorf("Send after recovery: %v", err)
			}
		})
	}
}

func TestFailAllOverHTTP(t *testing.T) {
	t.Parallel()
	emu := start(t, fcmemu.Config{})
	put(t, emu.url+"/emulator/config", `{"fail_all":"INTERNAL"}`, http.StatusOK)
	resp, err := emu.client.SendEachForMulticast(t.Context(), &messaging.MulticastMessage{
		Tokens: []string{"device-1", "device-2", "device-3"},
	})
	if err != nil {
		t.Fatalf("SendEachForMulticast: %v", err)
	}
	for i, r := range resp.Responses {
		if !messaging.IsInternal(r.Error) {
			t.Errorf("response %d while down: %v, want INTERNAL", i, r.Error)
		}
	}
	put(t, emu.url+"/emulator/config", `{"fail_all":""}`, http.StatusOK)
	resp, err = emu.client.SendEachForMulticast(t.Context(), &messaging.MulticastMessage{
		Tokens: []string{"device-1", "device-2", "device-3"},
	})
	if err != nil {
		t.Fatalf("SendEachForMulticast: %v", err)
	}
	if resp.SuccessCount != 3 {
		t.Errorf("after recovery %d of 3 delivered", resp.SuccessCount)
	}
	want := fcmemu.TokenStats{Received: 2, Delivered: 1, Failures: 1, LastError: fcmemu.Internal}
	if diff := cmp.Diff(want, emu.Token("device-2")); diff != "" {
		t.Errorf("Token(device-2) (-want +got):\n%s", diff)
	}
}

// clock is a settable clock for quota windows.
type clock struct{ ns atomic.Int64 }

func newClock(t time.Time) *clock {
	c := &clock{}
	c.Set(t)
	return c
}

func (c *clock) Now() time.Time  { return time.Unix(0, c.ns.Load()) }
func (c *clock) Set(t time.Time) { c.ns.Store(t.UnixNano()) }

func at(t *testing.T, s string) time.Time {
	t.Helper()
	v, err := time.Parse(time.RFC3339, s)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// sendCode names the error code whose helpers classify err, "" for nil.
func sendCode(err error) fcmemu.ErrorCode {
	for code, want := range classes {
		if code != "" && cmp.Equal(want, classify(err)) {
			return code
		}
	}
	if err != nil {
		return fcmemu.ErrorCode("unclassified: " + err.Error())
	}
	return ""
}

func TestQuotaPerMinute(t *testing.T) {
	t.Parallel()
	clk := newClock(at(t, "2026-01-01T12:00:45Z"))
	emu := start(t, fcmemu.Config{QuotaPerMinute: 3, Now: clk.Now})
	send := func() error {
		_, err := emu.client.Send(t.Context(), &messaging.Message{Token: "device-1"})
		return err
	}
	var got []fcmemu.ErrorCode
	for range 4 {
		got = append(got, sendCode(send()))
	}
	want := []fcmemu.ErrorCode{"", "", "", fcmemu.QuotaExceeded}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("sends in one window (-want +got):\n%s", diff)
	}

	clk.Set(at(t, "2026-01-01T12:00:59Z").Add(500 * time.Millisecond))
	err := send()
	if diff := cmp.Diff(response{Status: 429, RetryAfter: "1"}, responseOf(err)); diff != "" {
		t.Errorf("over quota 0.5 s before the window ends (-want +got):\n%s", diff)
	}
	clk.Set(at(t, "2026-01-01T12:00:50Z"))
	err = send()
	if diff := cmp.Diff(response{Status: 429, RetryAfter: "10"}, responseOf(err)); diff != "" {
		t.Errorf("over quota 10 s before the window ends (-want +got):\n%s", diff)
	}

	clk.Set(at(t, "2026-01-01T12:01:00Z"))
	if err := send(); err != nil {
		t.Errorf("first send of the next window: %v", err)
	}
	st := emu.Stats()
	if st.Delivered != 4 || st.Failed[fcmemu.QuotaExceeded] != 3 {
		t.Errorf("stats: delivered %d, quota exceeded %d; want 4, 3", st.Delivered, st.Failed[fcmemu.QuotaExceeded])
	}
}

func TestValidationThroughSDK(t *testing.T) {
	t.Parallel()
	emu := start(t, fcmemu.Config{})
	ttl := 29 * 24 * time.Hour
	tests := []struct {
		name string
		msg  *messaging.Message
	}{
		{"reserved key from", &messaging.Message{Data: map[string]string{"from": "x"}}},
		{"reserved key message_type", &messaging.Message{Data: map[string]string{"message_type": "x"}}},
		{"reserved key google.", &messaging.Message{Data: map[string]string{"google.c.a": "x"}}},
		{"reserved key gcm.", &messaging.Message{Data: map[string]string{"gcm.n.e": "x"}}},
		{"reserved android key", &messaging.Message{Android: &messaging.AndroidConfig{Data: map[string]string{"from": "x"}}}},
		{"too big data", &messaging.Message{Data: map[string]string{"k": strings.Repeat("x", 4096)}}},
		{"too big notification", &messaging.Message{
			Notification: &messaging.Notification{Title: strings.Repeat("t", 2000), Body: strings.Repeat("b", 2000)},
			Data:         map[string]string{"k": strings.Repeat("x", 100)},
		}},
		{"ttl over 28 days", &messaging.Message{Android: &messaging.AndroidConfig{TTL: &ttl}}},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.msg.Token = fmt.Sprintf("device-%d", i)
			_, err := emu.client.Send(t.Context(), tc.msg)
			if diff := cmp.Diff(classes[fcmemu.InvalidArgument], classify(err)); diff != "" {
				t.Errorf("Send: %v classified (-want +got):\n%s", err, diff)
			}
		})
	}

	t.Run("exactly 4096 bytes", func(t *testing.T) {
		t.Parallel()
		_, err := emu.client.Send(t.Context(), &messaging.Message{
			Token:        "device-limit",
			Notification: &messaging.Notification{Title: "ab", Body: "cd"},
			Data:         map[string]string{"key": strings.Repeat("x", 4096-4-3)},
		})
		if err != nil {
			t.Errorf("Send of a 4096-byte payload: %v", err)
		}
	})
}

// wireError is the part of an FCM error body the SDK reads.
type wireError struct {
	HTTPStatus int
	Status     string
	Message    string
	ErrorCode  string
}

func postRaw(t *testing.T, url, body string) wireError {
	t.Helper()
	resp, err := http.Post(url+"/v1/projects/demo/messages:send", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatalf("post: %v", err)
	}
	defer resp.Body.Close()
	var b struct {
		Error struct {
			Code    int
			Message string
			Status  string
			Details []struct {
				Type      string `json:"@type"`
				ErrorCode string `json:"errorCode"`
			}
		}
	}
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if err := json.Unmarshal(raw, &b); err != nil {
		t.Fatalf("decode %s: %v", raw, err)
	}
	if b.Error.Code != 0 && b.Error.Code != resp.StatusCode {
		t.Errorf("error.code %d, HTTP status %d: want equal", b.Error.Code, resp.StatusCode)
	}
	got := wireError{HTTPStatus: resp.StatusCode, Status: b.Error.Status, Message: b.Error.Message}
	for _, d := range b.Error.Details {
		if d.Type == "type.googleapis.com/google.firebase.fcm.v1.FcmError" {
			got.ErrorCode = d.ErrorCode
			break
		}
	}
	return got
}

const jsonError = "Invalid JSON payload received."

func TestValidationWire(t *testing.T) {
	t.Parallel()
	emu := start(t, fcmemu.Config{})
	invalid := func(msg string) wireError {
		return wireError{HTTPStatus: 400, Status: "INVALID_ARGUMENT", Message: msg, ErrorCode: "INVALID_ARGUMENT"}
	}
	noRecipient := invalid("Recipient of the message is not set.")
	tests := []struct {
		name string
		body string
		want wireError
	}{
		{"malformed json", `{"message":`, invalid(jsonError)},
		{"data value not a string", `{"message":{"token":"a","data":{"k":1}}}`, invalid(jsonError)},
		{"empty body", ``, invalid(jsonError)},
		{"no message", `{}`, noRecipient},
		{"no target", `{"message":{"notification":{"title":"t"}}}`, noRecipient},
		{"empty token", `{"message":{"token":""}}`, noRecipient},
		{"two targets", `{"message":{"token":"a","topic":"news"}}`, invalid("Exactly one of token, fid, topic or condition must be set.")},
		{"reserved key", `{"message":{"token":"a","data":{"from":"x"}}}`, invalid(`Invalid data payload key: "from" is reserved.`)},
		{"bad priority", `{"message":{"token":"a","android":{"priority":"urgent"}}}`, invalid(`Invalid value at 'message.android.priority': "urgent"`)},
		{"bad ttl", `{"message":{"token":"a","android":{"ttl":"10"}}}`, invalid(`Invalid value at 'message.android.ttl': "10"`)},
		{"ttl over 28 days", `{"message":{"token":"a","android":{"ttl":"2419201s"}}}`, invalid("TTL 2419201s exceeds the maximum of 2419200s (28 days).")},
		{"too big", `{"message":{"token":"a","data":{"k":"` + strings.Repeat("x", 4096) + `"}}}`, invalid("Message is too big: the payload is 4097 bytes, the limit is 4096.")},
		{"injected unregistered", `{"message":{"token":"unregistered-1"}}`, wireError{404, "NOT_FOUND", "Requested entity was not found.", "UNREGISTERED"}},
		{"injected invalid", `{"message":{"token":"invalid-1"}}`, invalid("The registration token is not a valid FCM registration token")},
		{"injected mismatch", `{"message":{"token":"mismatch-1"}}`, wireError{403, "PERMISSION_DENIED", "SenderId mismatch", "SENDER_ID_MISMATCH"}},
		{"injected autherr", `{"message":{"token":"autherr-1"}}`, wireError{401, "UNAUTHENTICATED", "Auth error from APNS or Web Push Service", "THIRD_PARTY_AUTH_ERROR"}},
		{"injected internal", `{"message":{"token":"internal-1"}}`, wireError{500, "INTERNAL", "Internal error encountered.", "INTERNAL"}},
		{"injected unavailable", `{"message":{"token":"unavailable-1"}}`, wireError{503, "UNAVAILABLE", "The service is currently unavailable.", "UNAVAILABLE"}},
		{"injected quota", `{"message":{"token":"quota-1"}}`, wireError{429, "RESOURCE_EXHAUSTED", "Quota exceeded for quota metric 'Send requests' (emulated).", "QUOTA_EXCEEDED"}},
		{"negative notification_count", `{"message":{"token":"a","android":{"notification":{"notification_count":-1}}}}`,
			invalid(`Invalid value at 'message.android.notification.notification_count': -1`)},
		{"bad visibility", `{"message":{"token":"a","android":{"notification":{"visibility":"HIDDEN"}}}}`,
			invalid(`Invalid value at 'message.android.notification.visibility': "HIDDEN"`)},
		{"http link", `{"message":{"token":"a","webpush":{"fcm_options":{"link":"http://example.com/"}}}}`,
			invalid("The link must be an absolute HTTPS URL.")},
		{"relative link", `{"message":{"token":"a","webpush":{"fcm_options":{"link":"/inbox"}}}}`,
			invalid("The link must be an absolute HTTPS URL.")},
		{"high-priority data message to Apple", `{"message":{"token":"a","data":{"k":"v"},"apns":{"headers":{"apns-priority":"10"},"payload":{"aps":{"content-available":1}}}}}`,
			invalid("Data messages to Apple devices must be sent with apns-priority 5.")},
		{"high-priority alert in aps", `{"message":{"token":"a","apns":{"headers":{"apns-priority":"10"},"payload":{"aps":{"alert":"hi"}}}}}`, wireError{HTTPStatus: 200}},
		{"high-priority notification", `{"message":{"token":"a","notification":{"title":"t"},"apns":{"headers":{"apns-priority":"10"}}}}`, wireError{HTTPStatus: 200}},
		{"background data message", `{"message":{"token":"a","data":{"k":"v"},"apns":{"headers":{"apns-priority":"5"},"payload":{"aps":{"content-available":1}}}}}`, wireError{HTTPStatus: 200}},
		{"platform options", `{"message":{"token":"a","notification":{"title":"t"},"android":{"notification":{"notification_count":0,"visibility":"SECRET","channel_id":"c"}},"webpush":{"fcm_options":{"link":"https://example.com/x"}}}}`, wireError{HTTPStatus: 200}},
		{"valid topic", `{"message":{"topic":"news"}}`, wireError{HTTPStatus: 200}},
		{"valid /topics/ topic", `{"message":{"topic":"/topics/news-1"}}`, wireError{HTTPStatus: 200}},
		{"topic names take the token rules", `{"message":{"topic":"unregistered-news"}}`, wireError{404, "NOT_FOUND", "Requested entity was not found.", "UNREGISTERED"}},
		{"bad topic", `{"message":{"topic":"news/today"}}`, invalid(`Invalid topic name: "news/today".`)},
		{"valid condition", `{"message":{"condition":"'a' in topics && ('b' in topics || !('c' in topics))"}}`, wireError{HTTPStatus: 200}},
		{"condition of six topics", `{"message":{"condition":"'a' in topics || 'b' in topics || 'c' in topics || 'd' in topics || 'e' in topics || 'f' in topics"}}`,
			invalid(`Invalid condition "'a' in topics || 'b' in topics || 'c' in topics || 'd' in topics || 'e' in topics || 'f' in topics": names 6 topics; FCM accepts at most 5.`)},
		{"bad condition", `{"message":{"condition":"news"}}`, invalid(`Invalid condition "news": unexpected "news" at offset 0: want 'topic' in topics, '!' or '('.`)},
		{"valid ttl", `{"message":{"token":"a","android":{"ttl":"2419200s","priority":"HIGH"}}}`, wireError{HTTPStatus: 200}},
		{"unknown fields are ignored", `{"message":{"token":"a","android":{"notification":{"proxy":"DENY"}}},"extra":1}`, wireError{HTTPStatus: 200}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got := postRaw(t, emu.url, tc.body)
			// encoding/json's wording is not ours to pin.
			if strings.HasPrefix(got.Message, jsonError) {
				got.Message = jsonError
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("POST %s (-want +got):\n%s", tc.body, diff)
			}
		})
	}
}

func TestSendEachForMulticastMixed(t *testing.T) {
	t.Parallel()
	emu := start(t, fcmemu.Config{UnavailableRetryAfter: noSDKRetry})
	kinds := []struct {
		prefix string
		want   fcmemu.ErrorCode
	}{
		{"device", ""},
		{"unregistered", fcmemu.Unregistered},
		{"invalid", fcmemu.InvalidArgument},
		{"mismatch", fcmemu.SenderIDMismatch},
		{"quota", fcmemu.QuotaExceeded},
		{"unavailable", fcmemu.Unavailable},
		{"internal", fcmemu.Internal},
		{"autherr", fcmemu.ThirdPartyAuthError},
		{"flaky1", fcmemu.Internal}, // then delivered on the second multicast
		{"device", ""},
	}
	tokens := make([]string, 500)
	want := make([]fcmemu.ErrorCode, len(tokens))
	wantStats := fcmemu.Stats{Requests: int64(len(tokens)), Failed: map[fcmemu.ErrorCode]int64{}}
	for i := range tokens {
		k := kinds[i%len(kinds)]
		tokens[i] = fmt.Sprintf("%s-%d", k.prefix, i)
		want[i] = k.want
		if k.want == "" {
			wantStats.Delivered++
		} else {
			wantStats.Failed[k.want]++
		}
	}
	msg := &messaging.MulticastMessage{Tokens: tokens, Data: map[string]string{"k": "v"}}
	resp, err := emu.client.SendEachForMulticast(t.Context(), msg)
	if err != nil {
		t.Fatalf("SendEachForMulticast: %v", err)
	}
	got := make([]fcmemu.ErrorCode, len(resp.Responses))
	for i, r := range resp.Responses {
		got[i] = sendCode(r.Error)
		if r.Success != (r.Error == nil) || r.Success != (r.MessageID != "") {
			t.Errorf("response %d: success %v, error %v, id %q", i, r.Success, r.Error, r.MessageID)
		}
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("per-token results (-want +got):\n%s", diff)
	}
	if resp.SuccessCount != int(wantStats.Delivered) || resp.FailureCount != len(tokens)-int(wantStats.Delivered) {
		t.Errorf("success %d, failure %d; want %d, %d", resp.SuccessCount, resp.FailureCount, wantStats.Delivered, len(tokens)-int(wantStats.Delivered))
	}

	var stats fcmemu.Stats
	getJSON(t, emu.url+"/emulator/stats?tokens=false", &stats)
	wantStats.Projects = map[string]fcmemu.ProjectStats{"demo": {
		Requests: wantStats.Requests, Delivered: wantStats.Delivered, Failed: wantStats.Failed,
	}}
	if diff := cmp.Diff(wantStats, stats); diff != "" {
		t.Errorf("GET /emulator/stats (-want +got):\n%s", diff)
	}

	// The second round delivers the flaky tokens.
	resp, err = emu.client.SendEachForMulticast(t.Context(), msg)
	if err != nil {
		t.Fatalf("second SendEachForMulticast: %v", err)
	}
	if !resp.Responses[8].Success {
		t.Errorf("flaky1-8 on the second send: %v, want delivered", resp.Responses[8].Error)
	}
	getJSON(t, emu.url+"/emulator/stats?token=flaky1-8&token=unregistered-1&token=never-seen", &stats)
	wantTokens := map[string]fcmemu.TokenStats{
		"flaky1-8":       {Received: 2, Delivered: 1, Failures: 1, LastError: fcmemu.Internal},
		"unregistered-1": {Received: 2, Failures: 2, LastError: fcmemu.Unregistered},
		"never-seen":     {},
	}
	if diff := cmp.Diff(wantTokens, stats.Tokens); diff != "" {
		t.Errorf("GET /emulator/stats?token=… tokens (-want +got):\n%s", diff)
	}
	if stats.Requests != 1000 || stats.Delivered != 2*wantStats.Delivered+50 {
		t.Errorf("after two rounds: requests %d, delivered %d; want 1000, %d", stats.Requests, stats.Delivered, 2*wantStats.Delivered+50)
	}
}

func TestMessagesAndValidateOnly(t *testing.T) {
	t.Parallel()
	emu := start(t, fcmemu.Config{})
	ttl := time.Hour
	name, err := emu.client.Send(t.Context(), &messaging.Message{
		Token:        "device-1",
		Notification: &messaging.Notification{Title: "Order shipped", Body: "Your order is on its way", ImageURL: "https://example.com/i.png"},
		Data:         map[string]string{"order_id": "42"},
		Android:      &messaging.AndroidConfig{Priority: "high", TTL: &ttl, CollapseKey: "orders"},
		APNS:         &messaging.APNSConfig{Headers: map[string]string{"apns-priority": "10"}},
		FCMOptions:   &messaging.FCMOptions{AnalyticsLabel: "orders"},
	})
	if err != nil {
		t.Fatalf("Send: %v", err)
	}
	if _, err := emu.client.SendDryRun(t.Context(), &messaging.Message{Token: "device-2"}); err != nil {
		t.Fatalf("SendDryRun: %v", err)
	}

	msgs := emu.Messages(10)
	want := []fcmemu.Received{
		{
			Project: "demo",
			Token:   "device-1",
			Message: fcmemu.Message{
				Token:        "device-1",
				Notification: &fcmemu.Notification{Title: "Order shipped", Body: "Your order is on its way", Image: "https://example.com/i.png"},
				Data:         map[string]string{"order_id": "42"},
				Android:      &fcmemu.AndroidConfig{Priority: "high", TTL: "3600s", CollapseKey: "orders"},
				APNS:         &fcmemu.APNSConfig{Headers: map[string]string{"apns-priority": "10"}},
				FCMOptions:   &fcmemu.FCMOptions{AnalyticsLabel: "orders"},
			},
			Status:    200,
			MessageID: name,
		},
		{Project: "demo", Token: "device-2", ValidateOnly: true, Message: fcmemu.Message{Token: "device-2"}, Status: 200},
	}
	opts := cmp.Options{
		cmpopts.IgnoreFields(fcmemu.Received{}, "Body", "ReceivedAt"),
		cmpopts.IgnoreFields(fcmemu.Received{}, "MessageID"),
	}
	if diff := cmp.Diff(want, msgs, opts); diff != "" {
		t.Errorf("Messages (-want +got):\n%s", diff)
	}
	if len(msgs) == 2 && msgs[0].MessageID != name {
		t.Errorf("recorded message id %q, Send returned %q", msgs[0].MessageID, name)
	}

	st := emu.Stats()
	if st.Requests != 2 || st.Delivered != 1 || st.Validated != 1 {
		t.Errorf("stats: requests %d delivered %d validated %d; want 2, 1, 1", st.Requests, st.Delivered, st.Validated)
	}
	if diff := cmp.Diff(fcmemu.TokenStats{Received: 1, Validated: 1}, emu.Token("device-2")); diff != "" {
		t.Errorf("Token(device-2) after a dry run (-want +got):\n%s", diff)
	}

	var page struct {
		Messages []struct {
			Token   string
			Status  int
			Payload struct {
				Token string
				Data  map[string]string
			}
		}
	}
	getJSON(t, emu.url+"/emulator/messages?token=device-1", &page)
	if len(page.Messages) != 1 || page.Messages[0].Payload.Data["order_id"] != "42" || page.Messages[0].Payload.Token != "device-1" {
		t.Errorf("GET /emulator/messages?token=device-1 = %+v, want the order message", page)
	}

	// payload=false: who received what and when, without the messages.
	var bare struct {
		Messages []map[string]any
	}
	getJSON(t, emu.url+"/emulator/messages?payload=false", &bare)
	if len(bare.Messages) != 2 {
		t.Fatalf("GET /emulator/messages?payload=false = %+v, want the 2 requests", bare)
	}
	for i, m := range bare.Messages {
		if _, ok := m["payload"]; ok {
			t.Errorf("message %d with payload=false has a payload: %v", i, m)
		}
		if _, ok := m["body"]; ok {
			t.Errorf("message %d with payload=false has a body: %v", i, m)
		}
		if m["token"] != []string{"device-1", "device-2"}[i] || m["status"] != 200.0 || m["received_at"] == nil {
			t.Errorf("message %d with payload=false = %v, want its token, status and received_at", i, m)
		}
	}
}

func TestMessageLogIsBounded(t *testing.T) {
	t.Parallel()
	emu := start(t, fcmemu.Config{MessageLog: 3})
	for i := range 5 {
		if _, err := emu.client.Send(t.Context(), &messaging.Message{Token: fmt.Sprintf("device-%d", i)}); err != nil {
			t.Fatalf("Send: %v", err)
		}
	}
	var got []string
	for _, m := range emu.Messages(0) {
		got = append(got, m.Token)
	}
	if diff := cmp.Diff([]string{"device-2", "device-3", "device-4"}, got); diff != "" {
		t.Errorf("Messages(0) tokens (-want +got):\n%s", diff)
	}
	got = got[:0]
	for _, m := range emu.Messages(2) {
		got = append(got, m.Token)
	}
	if diff := cmp.Diff([]string{"device-3", "device-4"}, got); diff != "" {
		t.Errorf("Messages(2) tokens (-want +got):\n%s", diff)
	}
}

func TestReset(t *testing.T) {
	t.Parallel()
	emu := start(t, fcmemu.Config{})
	send := func() error {
		_, err := emu.client.Send(t.Context(), &messaging.Message{Token: "flaky1-a"})
		return err
	}
	if err := send(); !messaging.IsInternal(err) {
		t.Fatalf("first send: %v, want INTERNAL", err)
	}
	if err := send(); err != nil {
		t.Fatalf("second send: %v", err)
	}
	post(t, emu.url+"/emulator/reset", http.StatusNoContent)

	if diff := cmp.Diff(fcmemu.Stats{Failed: map[fcmemu.ErrorCode]int64{}, Projects: map[string]fcmemu.ProjectStats{}, Tokens: map[string]fcmemu.TokenStats{}}, emu.Stats()); diff != "" {
		t.Errorf("Stats after reset (-want +got):\n%s", diff)
	}
	if got := emu.Messages(0); len(got) != 0 {
		t.Errorf("Messages after reset: %d, want none", len(got))
	}
	if err := send(); !messaging.IsInternal(err) {
		t.Errorf("first send after reset: %v, want INTERNAL (flaky counter reset)", err)
	}
}

func TestLatency(t *testing.T) {
	t.Parallel()
	const latency = 50 * time.Millisecond
	emu := start(t, fcmemu.Config{Latency: latency})
	begin := time.Now()
	if _, err := emu.client.Send(t.Context(), &messaging.Message{Token: "device-1"}); err != nil {
		t.Fatalf("Send: %v", err)
	}
	if took := time.Since(begin); took < latency {
		t.Errorf("Send took %s, want at least the latency %s", took, latency)
	}

	// If the emulator failed to notice the client leaving, the server's Close would wait
	// out the latency: keep it short enough not to hang the run.
	put(t, emu.url+"/emulator/config", `{"latency":"5s"}`, http.StatusOK)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
	defer cancel()
	if _, err := emu.client.Send(ctx, &messaging.Message{Token: "device-2"}); err == nil {
		t.Errorf("Send with a 20 ms deadline against 5 s of latency succeeded")
	}
	if got := emu.Stats().Requests; got != 1 {
		t.Errorf("requests %d, want 1: an abandoned request is not recorded", got)
	}
}

func TestControlEndpoints(t *testing.T) {
	t.Parallel()
	emu := start(t, fcmemu.Config{})
	tests := []struct {
		name       string
		method     string
		path       string
		body       string
		wantStatus int
		wantBody   []string // substrings
	}{
		{"health", "GET", "/healthz", "", 200, []string{"ok"}},
		{"live", "GET", "/livez", "", 200, []string{"ok"}},
		{"ready", "GET", "/readyz", "", 200, []string{"ok"}},
		{"config defaults", "GET", "/emulator/config", "", 200, []string{`"quota_per_minute":0`, `"latency":"0s"`, `"retry_after":"30s"`, `"unavailable_retry_after":"0s"`, `"fail_all":""`}},
		{"config every problem", "PUT", "/emulator/config", `{"quota_per_minute":-1,"latency":"soon","retry_after":"0s","fail_all":"DOWN"}`, 400, []string{"latency", "quota per minute", "retry after", "DOWN"}},
		{"config unknown field", "PUT", "/emulator/config", `{"quota":5}`, 400, []string{"quota"}},
		{"stats", "GET", "/emulator/stats", "", 200, []string{`"requests":0`}},
		{"messages bad limit", "GET", "/emulator/messages?limit=x", "", 400, []string{"limit"}},
		{"unknown path", "GET", "/v1/projects/demo/messages", "", 404, []string{"NOT_FOUND"}},
		{"send needs POST", "GET", "/v1/projects/demo/messages:send", "", 405, nil},
		{"batch endpoint is gone", "POST", "/batch", "", 404, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			req, err := http.NewRequestWithContext(t.Context(), tc.method, emu.url+tc.path, strings.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			status, body := do(t, req)
			if status != tc.wantStatus {
				t.Errorf("%s %s = %d %s, want %d", tc.method, tc.path, status, body, tc.wantStatus)
			}
			for _, s := range tc.wantBody {
				if !strings.Contains(body, s) {
					t.Errorf("%s %s body %s does not contain %q", tc.method, tc.path, body, s)
				}
			}
		})
	}
	if diff := cmp.Diff(fcmemu.Settings{RetryAfter: 30 * time.Second}, emu.Settings()); diff != "" {
		t.Errorf("settings changed by rejected PUTs (-want +got):\n%s", diff)
	}
}

func TestPutConfigPartial(t *testing.T) {
	t.Parallel()
	emu := start(t, fcmemu.Config{Latency: time.Millisecond})
	put(t, emu.url+"/emulator/config", `{"quota_per_minute":100,"retry_after":"1m30s","fail_all":"UNAVAILABLE"}`, http.StatusOK)
	want := fcmemu.Settings{QuotaPerMinute: 100, Latency: time.Millisecond, RetryAfter: 90 * time.Second, FailAll: fcmemu.Unavailable}
	if diff := cmp.Diff(want, emu.Settings()); diff != "" {
		t.Errorf("settings after PUT (-want +got):\n%s", diff)
	}
	if err := emu.SetSettings(fcmemu.Settings{RetryAfter: 0}); err == nil {
		t.Errorf("SetSettings with a zero RetryAfter: no error")
	}
	if err := emu.SetFailAll("DOWN"); err == nil {
		t.Errorf("SetFailAll(DOWN): no error")
	}
	if diff := cmp.Diff(want, emu.Settings()); diff != "" {
		t.Errorf("settings after rejected changes (-want +got):\n%s", diff)
	}
}

func TestMessageIDsAreUnique(t *testing.T) {
	t.Parallel()
	emu := start(t, fcmemu.Config{})
	tokens := make([]string, 200)
	for i := range tokens {
		tokens[i] = fmt.Sprintf("device-%d", i%7) // repeated tokens still get new ids
	}
	resp, err := emu.client.SendEachForMulticast(t.Context(), &messaging.MulticastMessage{Tokens: tokens})
	if err != nil {
		t.Fatalf("SendEachForMulticast: %v", err)
	}
	seen := map[string]bool{}
	for _, r := range resp.Responses {
		if seen[r.MessageID] {
			t.Errorf("message id %q returned twice", r.MessageID)
		}
		seen[r.MessageID] = true
	}
}

func do(t *testing.T, req *http.Request) (int, string) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read %s: %v", req.URL, err)
	}
	return resp.StatusCode, string(b)
}

func put(t *testing.T, url, body string, want int) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPut, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if status, b := do(t, req); status != want {
		t.Fatalf("PUT %s %s = %d %s, want %d", url, body, status, b, want)
	}
}

func post(t *testing.T, url string, want int) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if status, b := do(t, req); status != want {
		t.Fatalf("POST %s = %d %s, want %d", url, status, b, want)
	}
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	status, body := do(t, req)
	if status != http.StatusOK {
		t.Fatalf("GET %s = %d %s", url, status, body)
	}
	if err := json.Unmarshal([]byte(body), v); err != nil {
		t.Fatalf("decode GET %s: %v", url, errors.Join(err, fmt.Errorf("body %s", body)))
	}
}

// projectClient returns an SDK messaging client for project at e.
func (e emulator) projectClient(t *testing.T, project string) *messaging.Client {
	t.Helper()
	app, err := firebase.NewApp(t.Context(), &firebase.Config{ProjectID: project},
		option.WithEndpoint(e.url+"/v1"), option.WithoutAuthentication())
	if err != nil {
		t.Fatalf("new firebase app: %v", err)
	}
	client, err := app.Messaging(t.Context())
	if err != nil {
		t.Fatalf("new messaging client: %v", err)
	}
	return client
}

func TestProjectsHaveTheirOwnQuotaAndStats(t *testing.T) {
	t.Parallel()
	clk := newClock(at(t, "2026-01-01T12:00:30Z"))
	emu := start(t, fcmemu.Config{QuotaPerMinute: 2, ProjectQuotas: map[string]int{"big": 3}, Now: clk.Now})
	clients := map[string]*messaging.Client{"small": emu.projectClient(t, "small"), "big": emu.projectClient(t, "big")}
	sends := func(project string, n int) []fcmemu.ErrorCode {
		var got []fcmemu.ErrorCode
		for range n {
			_, err := clients[project].Send(t.Context(), &messaging.Message{Token: "device-1"})
			got = append(got, sendCode(err))
		}
		return got
	}
	q := fcmemu.QuotaExceeded
	if diff := cmp.Diff([]fcmemu.ErrorCode{"", "", q}, sends("small", 3)); diff != "" {
		t.Errorf("project small, quota 2 (-want +got):\n%s", diff)
	}
	// small's exhausted window leaves big's untouched.
	if diff := cmp.Diff([]fcmemu.ErrorCode{"", "", "", q}, sends("big", 4)); diff != "" {
		t.Errorf("project big, quota 3 (-want +got):\n%s", diff)
	}
	_, err := clients["big"].Send(t.Context(), &messaging.Message{Token: "device-1"})
	if diff := cmp.Diff(response{Status: 429, RetryAfter: "30"}, responseOf(err)); diff != "" {
		t.Errorf("over quota 30 s before the window ends (-want +got):\n%s", diff)
	}

	want := map[string]fcmemu.ProjectStats{
		"small": {Requests: 3, Delivered: 2, Failed: map[fcmemu.ErrorCode]int64{q: 1}},
		"big":   {Requests: 5, Delivered: 3, Failed: map[fcmemu.ErrorCode]int64{q: 2}},
	}
	st := emu.Stats()
	if diff := cmp.Diff(want, st.Projects); diff != "" {
		t.Errorf("per-project stats (-want +got):\n%s", diff)
	}
	if st.Requests != 8 || st.Delivered != 5 || st.Failed[q] != 3 {
		t.Errorf("totals: %d requests, %d delivered, %d quota exceeded; want 8, 5, 3", st.Requests, st.Delivered, st.Failed[q])
	}
	if diff := cmp.Diff(want["big"], emu.Project("big")); diff != "" {
		t.Errorf("Project(big) (-want +got):\n%s", diff)
	}
	if got := emu.Project("never"); got.Requests != 0 {
		t.Errorf("Project(never) = %+v, want zeros", got)
	}

	var overHTTP fcmemu.Stats
	getJSON(t, emu.url+"/emulator/stats?tokens=false", &overHTTP)
	if diff := cmp.Diff(want, overHTTP.Projects); diff != "" {
		t.Errorf("per-project stats over HTTP (-want +got):\n%s", diff)
	}
	var msgs struct {
		Messages []fcmemu.Received `json:"messages"`
	}
	getJSON(t, emu.url+"/emulator/messages?project=small", &msgs)
	if len(msgs.Messages) != 3 {
		t.Errorf("messages?project=small: %d, want 3", len(msgs.Messages))
	}
	for _, m := range msgs.Messages {
		if m.Project != "small" {
			t.Errorf("messages?project=small returned one of project %q", m.Project)
		}
	}

	emu.Reset()
	if st := emu.Stats(); len(st.Projects) != 0 {
		t.Errorf("projects after reset: %v", st.Projects)
	}
	if diff := cmp.Diff([]fcmemu.ErrorCode{"", ""}, sends("small", 2)); diff != "" {
		t.Errorf("project small after reset: the window starts over (-want +got):\n%s", diff)
	}
}

func TestPutProjectQuotas(t *testing.T) {
	t.Parallel()
	emu := start(t, fcmemu.Config{})
	put(t, emu.url+"/emulator/config", `{"project_quotas":{"a":10,"b":0}}`, http.StatusOK)
	if diff := cmp.Diff(map[string]int{"a": 10, "b": 0}, emu.Settings().ProjectQuotas); diff != "" {
		t.Errorf("project quotas after PUT (-want +got):\n%s", diff)
	}
	put(t, emu.url+"/emulator/config", `{"project_quotas":{"a":-1,"b/c":5}}`, http.StatusBadRequest)
	put(t, emu.url+"/emulator/config", `{"latency":"1ms"}`, http.StatusOK)
	if diff := cmp.Diff(map[string]int{"a": 10, "b": 0}, emu.Settings().ProjectQuotas); diff != "" {
		t.Errorf("project quotas after a rejected PUT and one without them (-want +got):\n%s", diff)
	}
	put(t, emu.url+"/emulator/config", `{"project_quotas":{}}`, http.StatusOK)
	if got := emu.Settings().ProjectQuotas; got != nil {
		t.Errorf("project quotas after PUT {}: %v, want none", got)
	}
}
