package logging

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"sync"
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

// TestStopping: the end of ctx is logged at once with its cause and the drain time, and the
// returned function adds how long stopping took; a service that never got a stop (a start-up
// failure) logs neither.
func TestStopping(t *testing.T) {
	t.Parallel()
	var out syncBuilder
	log := New(&out, "sender", slog.LevelInfo)
	ctx, cancel := context.WithCancelCause(context.Background())
	stopped := Stopping(ctx, log, 30*time.Second)
	cancel(errors.New("terminated signal received"))
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), `"stopping"`) && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	stopped()
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("want 2 lines, got %q", lines)
	}
	var first, second map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &first); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(lines[1]), &second); err != nil {
		t.Fatal(err)
	}
	delete(first, "time")
	want := map[string]any{"level": "INFO", "msg": "stopping", "service": "sender",
		"reason": "terminated signal received", "drain": 30.0}
	if diff := cmp.Diff(want, first); diff != "" {
		t.Errorf("stopping line (-want +got):\n%s", diff)
	}
	if took, ok := second["took"].(float64); second["msg"] != "stopped" || !ok || took < 0 {
		t.Errorf("stopped line: %v", second)
	}

	var quiet syncBuilder
	Stopping(context.Background(), New(&quiet, "sender", slog.LevelInfo), time.Second)()
	if quiet.String() != "" {
		t.Errorf("a service stopped without a signal logged %q", quiet.String())
	}
}

// syncBuilder is a strings.Builder that the AfterFunc goroutine and the test may share.
type syncBuilder struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuilder) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuilder) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
