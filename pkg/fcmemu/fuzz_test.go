package fcmemu_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"notify/pkg/fcmemu"
)

// FuzzSend posts fuzzed bodies to the send endpoint. Whatever arrives, the emulator answers
// with FCM's JSON: a message name, or an error whose status names the code, and a body that
// is not JSON is INVALID_ARGUMENT (400), as FCM answers it.
func FuzzSend(f *testing.F) {
	f.Add([]byte(`{"message":{"token":"tok-1","notification":{"title":"Hi","body":"there"},"data":{"k":"v"}}}`))
	f.Add([]byte(`{"validate_only":true,"message":{"topic":"news","android":{"priority":"HIGH","ttl":"3600s"}}}`))
	f.Add([]byte(`{"message":{"token":"a","topic":"b"}}`))
	f.Add([]byte(`{"message":{"token":"t","data":{"google.x":"1","from":"me"}}}`))
	f.Add([]byte(`{"message":{"token":"t","android":{"ttl":"99999999999999999999s","priority":"\u0000"}}}`))
	f.Add([]byte(`{"message":{"token":"t","android":{"ttl":"1.s"}}}`))
	f.Add([]byte(`{"message":{"token":"flaky503x2-t"}}`))
	f.Add([]byte(`{"message":{"token":"unregistered-t\u0000"}}`))
	f.Add([]byte(`{"message":{"token":"t","webpush":{"data":{"gcm.x":"y"}}}}`))
	f.Add([]byte(`{"message":null}`))
	f.Add([]byte("\xff\xfe{"))
	f.Add([]byte(`{"message":{"token":"t","notification":{"title":"` + strings.Repeat("x", 5000) + `"}}}`))
	f.Add([]byte(``))
	f.Fuzz(func(t *testing.T, body []byte) {
		emu := fcmemu.New(fcmemu.Config{MessageLog: 4})
		rec := httptest.NewRecorder()
		emu.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/v1/projects/p/messages:send", bytes.NewReader(body)))

		var answer struct {
			Name  string `json:"name"`
			Error *struct {
				Code   int    `json:"code"`
				Status string `json:"status"`
			} `json:"error"`
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &answer); err != nil {
			t.Fatalf("answer %d is not JSON: %v: %q", rec.Code, err, rec.Body.Bytes())
		}
		if got := emu.Stats().Requests; got != 1 {
			t.Fatalf("stats count %d requests, want 1", got)
		}
		if rec.Code == http.StatusOK {
			if answer.Name == "" || answer.Error != nil {
				t.Fatalf("200 without a message name: %s", rec.Body.Bytes())
			}
			var req struct {
				Message map[string]json.RawMessage `json:"message"`
			}
			if err := json.Unmarshal(body, &req); err != nil || req.Message == nil {
				t.Fatalf("delivered a request without a message: %q", body)
			}
			return
		}
		if answer.Error == nil || answer.Error.Status == "" || answer.Error.Code != rec.Code {
			t.Fatalf("error %d without FCM's error body: %s", rec.Code, rec.Body.Bytes())
		}
		if !json.Valid(body) && (rec.Code != http.StatusBadRequest || answer.Error.Status != "INVALID_ARGUMENT") {
			t.Fatalf("a body that is not JSON answered %d %s, want 400 INVALID_ARGUMENT", rec.Code, answer.Error.Status)
		}
	})
}

// FuzzPutConfig sends fuzzed settings to the control endpoint: a change is applied whole
// or refused with 400, never half-applied, and the settings stay valid.
func FuzzPutConfig(f *testing.F) {
	f.Add([]byte(`{"quota_per_minute":10,"latency":"5ms","fail_all":"UNAVAILABLE"}`))
	f.Add([]byte(`{"fail_all":""}`))
	f.Add([]byte(`{"latency":"-1s"}`))
	f.Add([]byte(`{"retry_after":"1e400h","quota_per_minute":-1}`))
	f.Add([]byte(`{"fail_all":"NOT_A_CODE","quota_per_minute":5}`))
	f.Add([]byte(`[]`))
	f.Add([]byte("{\"latency\":\"\x00\"}"))
	f.Fuzz(func(t *testing.T, body []byte) {
		emu := fcmemu.New(fcmemu.Config{})
		before := emu.Settings()
		rec := httptest.NewRecorder()
		emu.ServeHTTP(rec, httptest.NewRequest(http.MethodPut, "/emulator/config", bytes.NewReader(body)))
		switch rec.Code {
		case http.StatusOK:
		case http.StatusBadRequest:
			if after := emu.Settings(); !cmp.Equal(after, before) {
				t.Fatalf("refused change applied: %+v → %+v", before, after)
			}
		default:
			t.Fatalf("PUT /emulator/config answered %d: %s", rec.Code, rec.Body.Bytes())
		}
		if !json.Valid(rec.Body.Bytes()) {
			t.Fatalf("answer is not JSON: %q", rec.Body.Bytes())
		}
		if err := emu.SetSettings(emu.Settings()); err != nil {
			t.Fatalf("settings after %q are invalid: %v", body, err)
		}
	})
}
