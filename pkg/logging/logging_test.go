package logging

import (
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestDurationsInSeconds: every duration attribute, nested ones too, is a number of seconds.
func TestDurationsInSeconds(t *testing.T) {
	t.Parallel()
	var out strings.Builder
	New(&out, "sender", slog.LevelInfo).Info("x", "retry_in", 1500*time.Millisecond,
		slog.Group("settings", "RETRY_BASE_DELAY", 10*time.Second), "count", 3)
	var got map[string]any
	if err := json.Unmarshal([]byte(out.String()), &got); err != nil {
		t.Fatal(err)
	}
	delete(got, "time")
	want := map[string]any{"level": "INFO", "msg": "x", "service": "sender", "retry_in": 1.5,
		"settings": map[string]any{"RETRY_BASE_DELAY": 10.0}, "count": 3.0}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("log line (-want +got):\n%s", diff)
	}
}
