package fcm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// outcome is what the tests compare a per-token or call-level error by.
type outcome struct {
	Code       string
	Kind       string
	RetryAfter time.Duration
}

func kindName(err error) string {
	switch {
	case err == nil:
		return ""
	case errors.Is(err, ErrTokenGone):
		return "gone"
	case errors.Is(err, ErrTransient):
		return "transient"
	case errors.Is(err, ErrPermanent):
		return "permanent"
	}
	return "unclassified"
}

func outcomeOf(err error) outcome {
	o := outcome{Code: Code(err), Kind: kindName(err)}
	if se, ok := errors.AsType[*SendError](err); ok {
		o.RetryAfter = se.RetryAfter
	}
	return o
}

// fcmError renders a google.rpc.Status body as FCM sends it, with an FcmError detail when
// fcmCode is set and a BadRequest field violation when field is set.
func fcmError(code int, status, message, fcmCode, field string) string {
	var details []any
	if fcmCode != "" {
		details = append(details, map[string]string{
			"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": fcmCode,
		})
	}
	if field != "" {
		details = append(details, map[string]any{
			"@type":           "type.googleapis.com/google.rpc.BadRequest",
			"fieldViolations": []map[string]string{{"field": field, "description": message}},
		})
	}
	// Strings, ints and maps of them: Marshal cannot fail.
	b, _ := json.Marshal(map[string]any{"error": map[string]any{
		"code": code, "status": status, "message": message, "details": details,
	}})
	return string(b)
}

// canned is one HTTP answer of the stub FCM.
type canned struct {
	status int
	header map[string]string
	body   string
}

// stubFCM answers each send with the canned answer named by the message's token (success
// for others) and counts the requests per token. Tokens starting "slow" wait delay first.
type stubFCM struct {
	answers map[string]canned
	delay   time.Duration
	hits    map[string]*atomic.Int32 // filled by newStub, read-only after
}

func (s *stubFCM) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Message struct {
			Token string `json:"token"`
		} `json:"message"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if n := s.hits[req.Message.Token]; n != nil {
		n.Add(1)
	}
	if strings.HasPrefix(req.Message.Token, "slow") {
		select {
		case <-time.After(s.delay):
		case <-r.Context().Done():
			return
		}
	}
	a, ok := s.answers[req.Message.Token]
	if !ok {
		a = canned{status: http.StatusOK, body: `{"name":"projects/demo/messages/1"}`}
	}
	for k, v := range a.header {
		w.Header().Set(k, v)
	}
	w.WriteHeader(a.status)
	_, _ = io.WriteString(w, a.body)
}

func newStub(answers map[string]canned, tokens ...string) *stubFCM {
	s := &stubFCM{answers: answers, hits: make(map[string]*atomic.Int32)}
	for _, t := range append(tokens, keys(answers)...) {
		s.hits[t] = new(atomic.Int32)
	}
	return s
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// emulatorClient returns a Client for a server at url, built the way New builds it.
func emulatorClient(t testing.TB, url string, cfg Config) *Client {
	t.Helper()
	cfg.ProjectID, cfg.Endpoint = "demo", url+"/v1"
	c, err := New(t.Context(), cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c
}

// TestClassifySDK drives the real SDK against a stub answering as FCM does and checks what
// each answer is classified as.
func TestClassifySDK(t *testing.T) {
	t.Parallel()
	now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name   string
		answer canned
		want   outcome
	}{
		{"unregistered", canned{404, nil, fcmError(404, "NOT_FOUND", "Requested entity was not found.", "UNREGISTERED", "")},
			outcome{"UNREGISTERED", "gone", 0}},
		{"invalid token as FCM answers it", canned{400, nil, fcmError(400, "INVALID_ARGUMENT", "The registration token is not a valid FCM registration token", "INVALID_ARGUMENT", "")},
			outcome{"INVALID_ARGUMENT", "gone", 0}},
		{"invalid token named by field", canned{400, nil, fcmError(400, "INVALID_ARGUMENT", "Request contains an invalid argument.", "INVALID_ARGUMENT", "message.token")},
			outcome{"INVALID_ARGUMENT", "gone", 0}},
		{"invalid payload", canned{400, nil, fcmError(400, "INVALID_ARGUMENT", `Invalid data payload key: "from" is reserved.`, "INVALID_ARGUMENT", "message.data")},
			outcome{"INVALID_ARGUMENT", "permanent", 0}},
		{"invalid argument, no hint", canned{400, nil, fcmError(400, "INVALID_ARGUMENT", "Request contains an invalid argument.", "INVALID_ARGUMENT", "")},
			outcome{"INVALID_ARGUMENT", "permanent", 0}},
		{"sender id mismatch", canned{403, nil, fcmError(403, "PERMISSION_DENIED", "SenderId mismatch", "SENDER_ID_MISMATCH", "")},
			outcome{"SENDER_ID_MISMATCH", "gone", 0}},
		{"quota, Retry-After seconds", canned{429, map[string]string{"Retry-After": "42"}, fcmError(429, "RESOURCE_EXHAUSTED", "Quota exceeded.", "QUOTA_EXCEEDED", "")},
			outcome{"QUOTA_EXCEEDED", "transient", 42 * time.Second}},
		{"quota, Retry-After date", canned{429, map[string]string{"Retry-After": now.Add(90 * time.Second).Format(http.TimeFormat)}, fcmError(429, "RESOURCE_EXHAUSTED", "Quota exceeded.", "QUOTA_EXCEEDED", "")},
			outcome{"QUOTA_EXCEEDED", "transient", 90 * time.Second}},
		// A Retry-After above the SDK's 2-minute cap stops it retrying the 503 itself.
		{"unavailable", canned{503, map[string]string{"Retry-After": "300"}, fcmError(503, "UNAVAILABLE", "The service is currently unavailable.", "UNAVAILABLE", "")},
			outcome{"UNAVAILABLE", "transient", 5 * time.Minute}},
		{"internal", canned{500, nil, fcmError(500, "INTERNAL", "Internal error encountered.", "INTERNAL", "")},
			outcome{"INTERNAL", "transient", 0}},
		{"third party auth", canned{401, nil, fcmError(401, "UNAUTHENTICATED", "Auth error from APNS or Web Push Service", "THIRD_PARTY_AUTH_ERROR", "")},
			outcome{"THIRD_PARTY_AUTH_ERROR", "permanent", 0}},
		{"apns auth (legacy code)", canned{401, nil, fcmError(401, "UNAUTHENTICATED", "Auth error from APNS", "APNS_AUTH_ERROR", "")},
			outcome{"THIRD_PARTY_AUTH_ERROR", "permanent", 0}},
		{"our credentials refused", canned{401, nil, fcmError(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.", "", "")},
			outcome{"UNAUTHENTICATED", "permanent", 0}},
		{"wrong project", canned{404, nil, fcmError(404, "NOT_FOUND", "Requested entity was not found.", "", "")},
			outcome{"NOT_FOUND", "permanent", 0}},
		{"proxy 502", canned{502, map[string]string{"Content-Type": "text/html"}, "<html>Bad Gateway</html>"},
			outcome{"HTTP_502", "transient", 0}},
		{"429 without FCM code", canned{429, map[string]string{"Retry-After": "7"}, fcmError(429, "RESOURCE_EXHAUSTED", "Slow down.", "", "")},
			outcome{"RESOURCE_EXHAUSTED", "transient", 7 * time.Second}},
		{"FCM code newer than us", canned{400, nil, fcmError(400, "FAILED_PRECONDITION", "New.", "SOMETHING_NEW", "")},
			outcome{"SOMETHING_NEW", "permanent", 0}},
		{"success body unreadable", canned{200, nil, "not json"},
			outcome{"UNKNOWN", "permanent", 0}},
	}
	answers := make(map[string]canned)
	for _, tt := range tests {
		answers[tt.name] = tt.answer
	}
	srv := httptest.NewServer(newStub(answers))
	t.Cleanup(srv.Close)
	c := emulatorClient(t, srv.URL, Config{})
	c.now = func() time.Time { return now }

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			res, err := c.SendMulticast(t.Context(), Message{Title: "t"}, []string{tt.name})
			if err != nil {
				t.Fatalf("SendMulticast: call-level error %v, want a per-token one", err)
			}
			if diff := cmp.Diff(tt.want, outcomeOf(res[0].Err)); diff != "" {
				t.Errorf("classified (-want +got):\n%s\nerror: %v", diff, res[0].Err)
			}
			if res[0].MessageID != "" {
				t.Errorf("MessageID = %q on failure", res[0].MessageID)
			}
		})
	}
}

func TestClassify(t *testing.T) {
	t.Parallel()
	ours := &SendError{Code: "X", Kind: ErrTransient}
	tests := []struct {
		name string
		err  error
		want outcome
	}{
		{"context deadline", context.DeadlineExceeded, outcome{"TIMEOUT", "transient", 0}},
		{"context deadline wrapped", fmt.Errorf("send: %w", context.DeadlineExceeded), outcome{"TIMEOUT", "transient", 0}},
		{"context canceled", context.Canceled, outcome{"CANCELED", "transient", 0}},
		{"connection reset", &net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}, outcome{"NETWORK", "transient", 0}},
		{"dns timeout", &net.DNSError{Err: "i/o timeout", Name: "fcm.googleapis.com", IsTimeout: true}, outcome{"TIMEOUT", "transient", 0}},
		{"unrecognised", errors.New("error while parsing response: EOF"), outcome{"UNKNOWN", "permanent", 0}},
		{"already ours", ours, outcome{"X", "transient", 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			se := classify(tt.err, time.Now())
			if diff := cmp.Diff(tt.want, outcomeOf(se)); diff != "" {
				t.Errorf("classify(%v) (-want +got):\n%s", tt.err, diff)
			}
			if !errors.Is(se, tt.err) {
				t.Errorf("classify(%v) does not unwrap to the original error", tt.err)
			}
		})
	}
	if se := classify(nil, time.Now()); se != nil {
		t.Errorf("classify(nil) = %v, want nil", se)
	}
}

func TestSendErrorMatching(t *testing.T) {
	t.Parallel()
	sdkErr := errors.New("sdk said no")
	se := &SendError{Code: "QUOTA_EXCEEDED", RetryAfter: time.Minute, Kind: ErrTransient, Err: sdkErr}
	wrapped := fmt.Errorf("deliver chunk: %w", se)

	if !errors.Is(wrapped, ErrTransient) {
		t.Error("errors.Is(wrapped, ErrTransient) = false")
	}
	if errors.Is(wrapped, ErrPermanent) || errors.Is(wrapped, ErrTokenGone) {
		t.Error("a transient error matches another kind")
	}
	if !errors.Is(wrapped, sdkErr) {
		t.Error("errors.Is(wrapped, sdk error) = false: Unwrap lost it")
	}
	got, ok := errors.AsType[*SendError](wrapped)
	if !ok || got.Code != "QUOTA_EXCEEDED" || got.RetryAfter != time.Minute {
		t.Errorf("errors.As = %+v, %t", got, ok)
	}
	if want := "fcm QUOTA_EXCEEDED: sdk said no"; se.Error() != want {
		t.Errorf("Error() = %q, want %q", se.Error(), want)
	}
	if want := "fcm UNREGISTERED"; (&SendError{Code: "UNREGISTERED", Kind: ErrTokenGone}).Error() != want {
		t.Errorf("Error() without Err = %q, want %q", (&SendError{Code: "UNREGISTERED"}).Error(), want)
	}

	codes := []struct {
		err  error
		want string
	}{
		{nil, "OK"},
		{se, "QUOTA_EXCEEDED"},
		{wrapped, "QUOTA_EXCEEDED"},
		{errors.New("other"), "UNKNOWN"},
	}
	for _, c := range codes {
		if got := Code(c.err); got != c.want {
			t.Errorf("Code(%v) = %q, want %q", c.err, got, c.want)
		}
	}
}

func TestRetryAfter(t *testing.T) {
	t.Parallel()
	now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
	}{
		{"", 0},
		{"0", 0},
		{"42", 42 * time.Second},
		{"-3", 0},
		{"soon", 0},
		{"99999999999999", 0},
		{now.Add(2 * time.Minute).Format(http.TimeFormat), 2 * time.Minute},
		{now.Add(-time.Minute).Format(http.TimeFormat), 0},
		{"Sat, 01 Mar 2025 12:00:30 GMT", 30 * time.Second},
	}
	for _, tt := range tests {
		if got := retryAfter(tt.in, now); got != tt.want {
			t.Errorf("retryAfter(%q) = %s, want %s", tt.in, got, tt.want)
		}
	}
}

// TestCallLevel checks the failures of a whole call: they come back as the error, classified,
// with every token's result.
func TestCallLevel(t *testing.T) {
	t.Parallel()

	t.Run("context cancelled before the call", func(t *testing.T) {
		t.Parallel()
		stub := newStub(nil, "a", "b")
		srv := httptest.NewServer(stub)
		t.Cleanup(srv.Close)
		c := emulatorClient(t, srv.URL, Config{})
		ctx, cancel := context.WithCancel(t.Context())
		cancel()

		res, err := c.SendMulticast(ctx, Message{Title: "t"}, []string{"a", "b"})
		if diff := cmp.Diff(outcome{"CANCELED", "transient", 0}, outcomeOf(err)); diff != "" {
			t.Errorf("call error (-want +got):\n%s", diff)
		}
		if len(res) != 2 {
			t.Fatalf("got %d results, want 2", len(res))
		}
		for _, r := range res {
			if diff := cmp.Diff(outcome{"CANCELED", "transient", 0}, outcomeOf(r.Err)); diff != "" {
				t.Errorf("token %s (-want +got):\n%s", r.Token, diff)
			}
		}
		if n := stub.hits["a"].Load() + stub.hits["b"].Load(); n != 0 {
			t.Errorf("stub got %d requests, want 0", n)
		}
	})

	t.Run("timeout applies to each request", func(t *testing.T) {
		t.Parallel()
		stub := newStub(nil, "slow")
		stub.delay = 5 * time.Second
		srv := httptest.NewServer(stub)
		t.Cleanup(srv.Close)
		c := emulatorClient(t, srv.URL, Config{Timeout: 100 * time.Millisecond})
		// The SDK retries a timed-out request at once, then after 1s: within 950ms a
		// per-request timeout allows exactly two attempts (~200ms, the rest is slack for a
		// loaded machine); a per-call one would allow one.
		ctx, cancel := context.WithTimeout(t.Context(), 950*time.Millisecond)
		defer cancel()

		res, err := c.SendMulticast(ctx, Message{Title: "t"}, []string{"slow"})
		if diff := cmp.Diff(outcome{"TIMEOUT", "transient", 0}, outcomeOf(err)); diff != "" {
			t.Errorf("call error (-want +got):\n%s", diff)
		}
		if len(res) != 1 || Code(res[0].Err) != "TIMEOUT" {
			t.Errorf("results = %+v, want one TIMEOUT", res)
		}
		if n := stub.hits["slow"].Load(); n != 2 {
			t.Errorf("stub got %d attempts, want 2", n)
		}
	})

	t.Run("context ends mid-call", func(t *testing.T) {
		t.Parallel()
		stub := newStub(nil, "fast", "slow")
		stub.delay = 5 * time.Second
		srv := httptest.NewServer(stub)
		t.Cleanup(srv.Close)
		c := emulatorClient(t, srv.URL, Config{})
		ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
		defer cancel()

		res, err := c.SendMulticast(ctx, Message{Title: "t"}, []string{"fast", "slow"})
		if diff := cmp.Diff(outcome{"TIMEOUT", "transient", 0}, outcomeOf(err)); diff != "" {
			t.Errorf("call error (-want +got):\n%s", diff)
		}
		// The results still say which token did get its message.
		if len(res) != 2 || res[0].Err != nil || res[0].MessageID == "" || Code(res[1].Err) != "TIMEOUT" {
			t.Errorf("results = %+v, want fast delivered, slow TIMEOUT", res)
		}
	})

	// The SDK retries failed round trips 4 times, waiting 0+1+2+4 s: these take 7 s.
	transport := []struct {
		name string
		err  error
		want outcome
	}{
		{"connection refused", &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}, outcome{"UNAVAILABLE", "transient", 0}},
		{"connection reset", io.ErrUnexpectedEOF, outcome{"NETWORK", "transient", 0}},
	}
	for _, tt := range transport {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if testing.Short() {
				t.Skip("waits out the SDK's 7s of retries")
			}
			var attempts atomic.Int32
			hc := &http.Client{Transport: roundTripFunc(func(*http.Request) (*http.Response, error) {
				attempts.Add(1)
				return nil, tt.err
			})}
			c, err := newClient(t.Context(), "demo", "http://fcm.invalid/v1", hc)
			if err != nil {
				t.Fatal(err)
			}
			res, err := c.SendMulticast(t.Context(), Message{Title: "t"}, []string{"a", "b", "c"})
			if diff := cmp.Diff(tt.want, outcomeOf(err)); diff != "" {
				t.Errorf("call error (-want +got):\n%s\nerror: %v", diff, err)
			}
			for _, r := range res {
				if diff := cmp.Diff(tt.want, outcomeOf(r.Err)); diff != "" {
					t.Errorf("token %s (-want +got):\n%s", r.Token, diff)
				}
			}
			if n := attempts.Load(); n != 15 {
				t.Errorf("%d round trips, want 3 tokens × 5 attempts", n)
			}
		})
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
