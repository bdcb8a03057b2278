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

// TestStoppedComesAfterStopping stops the service the moment its signal arrives, as the
// FCM emulator does: "stopped" must still follow "stopping" (it came first, or alone, when
// the two goroutines raced).
func TestStoppedComesAfterStopping(t *testing.T) {
	t.Parallel()
	for range 200 {
		var out syncBuilder
		ctx, cancel := context.WithCancel(context.Background())
		stopped := Stopping(ctx, New(&out, "fcm-emulator", slog.LevelInfo), time.Second)
		cancel()
		stopped()
		var msgs []string
		for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
			var rec struct{ Msg string }
			if err := json.Unmarshal([]byte(line), &rec); err != nil {
				t.Fatalf("log line %q: %v", line, err)
			}
			msgs = append(msgs, rec.Msg)
		}
		if diff := cmp.Diff([]string{"stopping", "stopped"}, msgs); diff != "" {
			t.Fatalf("log of a service stopped at once (-want +got):\n%s", diff)
		}
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

// TestRepeat: a failure every second for a minute is 1 line at once, 1 per interval after,
// and 1 when it ends; the next failure begins a new run, logged at once.
func TestRepeat(t *testing.T) {
	t.Parallel()
	var out strings.Builder
	r := NewRepeat(New(&out, "producer", slog.LevelInfo), "outbox round failed; retrying", "outbox rounds succeed again", 30*time.Second)
	clock := time.Date(2026, 11, 30, 10, 0, 0, 0, time.UTC)
	r.now = func() time.Time { return clock }
	for range 61 { // at 0 s, 1 s, ... 60 s
		r.Fail(errors.New("connection refused"))
		clock = clock.Add(time.Second)
	}
	r.OK()
	r.OK() // nothing to end
	r.Fail(errors.New("again"))

	var got []map[string]any
	for line := range strings.Lines(out.String()) {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatal(err)
		}
		delete(m, "time")
		delete(m, "service")
		got = append(got, m)
	}
	fail := func(repeats, secs float64, err string) map[string]any {
		return map[string]any{"level": "WARN", "msg": "outbox round failed; retrying", "err": err, "repeats": repeats, "for": secs}
	}
	want := []map[string]any{
		fail(1, 0, "connection refused"),
		fail(30, 30, "connection refused"),
		fail(30, 60, "connection refused"),
		{"level": "INFO", "msg": "outbox rounds succeed again", "failures": 61.0, "for": 61.0},
		fail(1, 0, "again"),
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("lines (-want +got):\n%s", diff)
	}
}
