package deadletter

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestWebhookErrorHidesURL keeps the webhook's secret path out of errors, which are logged.
func TestWebhookErrorHidesURL(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.NotFoundHandler())
	srv.Close() // nothing listens any more: the client fails with a *url.Error
	a := Alert{Total: 1, From: time.Now(), To: time.Now(), Groups: []Group{{Reason: "r", Count: 1}}}
	err := NewWebhook(srv.URL+"/services/T0/B0/s3cr3t").Post(context.Background(), a)
	if err == nil {
		t.Fatal("Post succeeded against a closed server")
	}
	if strings.Contains(err.Error(), "s3cr3t") {
		t.Errorf("error reveals the webhook URL: %v", err)
	}
}
