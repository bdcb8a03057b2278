package rabbit

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	amqp "github.com/rabbitmq/amqp091-go"
)

func TestWaitDelays(t *testing.T) {
	t.Parallel()
	s := time.Second
	tests := []struct {
		name      string
		base, max time.Duration
		want      []time.Duration
	}{
		{"design defaults", 10 * s, 320 * s, []time.Duration{10 * s, 20 * s, 40 * s, 80 * s, 160 * s, 320 * s}},
		{"cap off the series is the last level", 10 * s, 300 * s, []time.Duration{10 * s, 20 * s, 40 * s, 80 * s, 160 * s, 300 * s}},
		{"cap equal to base", 10 * s, 10 * s, []time.Duration{10 * s}},
		{"cap below base", 10 * s, 5 * s, []time.Duration{10 * s}},
		{"milliseconds", 200 * time.Millisecond, 400 * time.Millisecond, []time.Duration{200 * time.Millisecond, 400 * time.Millisecond}},
		{"no base", 0, 320 * s, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if diff := cmp.Diff(tt.want, WaitDelays(tt.base, tt.max)); diff != "" {
				t.Errorf("WaitDelays(%v, %v) mismatch (-want +got):\n%s", tt.base, tt.max, diff)
			}
		})
	}
}

func TestWaitLevel(t *testing.T) {
	t.Parallel()
	s := time.Second
	topo := Topology{Name: "notify", WaitDelays: WaitDelays(10*s, 320*s)} // 10 20 40 80 160 320
	tests := []struct {
		name       string
		attempt    int
		retryAfter time.Duration
		want       int
		wantKey    string
	}{
		{"first failure", 1, 0, 0, "wait.10s"},
		{"second failure", 2, 0, 1, "wait.20s"},
		{"sixth failure is the cap", 6, 0, 5, "wait.5m20s"},
		{"past the last level reuses it", 40, 0, 5, "wait.5m20s"},
		{"attempt 0 is treated as the first", 0, 0, 0, "wait.10s"},
		{"retry-after equal to a level", 1, 40 * s, 2, "wait.40s"},
		{"retry-after rounds up to the next level", 1, 41 * s, 3, "wait.1m20s"},
		{"retry-after just above the first level", 1, 10*s + time.Millisecond, 1, "wait.20s"},
		{"retry-after shorter than the attempt's level", 4, 5 * s, 3, "wait.1m20s"},
		{"retry-after beyond the cap gets the cap", 1, time.Hour, 5, "wait.5m20s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := topo.WaitLevel(tt.attempt, tt.retryAfter)
			if got != tt.want {
				t.Fatalf("WaitLevel(%d, %v) = %d, want %d", tt.attempt, tt.retryAfter, got, tt.want)
			}
			if key := topo.WaitRoutingKey(got); key != tt.wantKey {
				t.Errorf("WaitRoutingKey(%d) = %q, want %q", got, key, tt.wantKey)
			}
			if q, want := topo.WaitQueue(got), "notify."+tt.wantKey; q != want {
				t.Errorf("WaitQueue(%d) = %q, want %q", got, q, want)
			}
		})
	}

	if got := (Topology{Name: "x"}).WaitLevel(1, 0); got != -1 {
		t.Errorf("WaitLevel without wait levels = %d, want -1", got)
	}
}

func TestFormatDelay(t *testing.T) {
	t.Parallel()
	tests := []struct {
		d    time.Duration
		want string
	}{
		{10 * time.Second, "10s"},
		{320 * time.Second, "5m20s"},
		{10 * time.Minute, "10m"},
		{time.Hour, "1h"},
		{90 * time.Minute, "1h30m"},
		{time.Hour + time.Second, "1h0m1s"},
		{200 * time.Millisecond, "200ms"},
		{1500 * time.Millisecond, "1.5s"},
	}
	for _, tt := range tests {
		if got := formatDelay(tt.d); got != tt.want {
			t.Errorf("formatDelay(%v) = %q, want %q", tt.d, got, tt.want)
		}
	}
}

func TestTopologyQueues(t *testing.T) {
	t.Parallel()
	topo := Topology{Name: "notify", WaitDelays: []time.Duration{10 * time.Second, 320 * time.Second}, DeliveryLimit: 20}
	dlx := func(key string) amqp.Table {
		return amqp.Table{
			"x-queue-type":              "quorum",
			"x-dead-letter-exchange":    "notify",
			"x-dead-letter-routing-key": key,
			"x-dead-letter-strategy":    "at-least-once",
			"x-overflow":                "reject-publish",
		}
	}
	with := func(t amqp.Table, k string, v any) amqp.Table { t[k] = v; return t }
	want := []queueSpec{
		{name: "notify.send", key: "send", args: with(dlx("dead"), "x-delivery-limit", int64(20))},
		{name: "notify.send.packed", key: "send.packed", args: dlx("dead")},
		{name: "notify.retry", key: "retry", args: with(dlx("dead"), "x-delivery-limit", int64(20))},
		{name: "notify.dead", key: "dead", args: amqp.Table{"x-queue-type": "quorum"}},
		{name: "notify.wait.10s", key: "wait.10s", args: with(dlx("retry"), "x-message-ttl", int64(10000))},
		{name: "notify.wait.5m20s", key: "wait.5m20s", args: with(dlx("retry"), "x-message-ttl", int64(320000))},
	}
	if diff := cmp.Diff(want, topo.queues(), cmp.AllowUnexported(queueSpec{})); diff != "" {
		t.Errorf("queues() mismatch (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"notify.send", "notify.send.packed", "notify.retry", "notify.dead", "notify.wait.10s", "notify.wait.5m20s"}, topo.Queues()); diff != "" {
		t.Errorf("Queues() mismatch (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"notify.retry", "notify.wait.10s", "notify.wait.5m20s"}, topo.RetryQueues()); diff != "" {
		t.Errorf("RetryQueues() mismatch (-want +got):\n%s", diff)
	}
}

func TestTopologyValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		topo    Topology
		wantErr bool
	}{
		{"valid", Topology{Name: "n", WaitDelays: WaitDelays(10*time.Second, 320*time.Second), DeliveryLimit: 20}, false},
		{"no wait levels", Topology{Name: "n"}, false},
		{"empty name", Topology{}, true},
		{"negative delivery limit", Topology{Name: "n", DeliveryLimit: -1}, true},
		{"delays not increasing", Topology{Name: "n", WaitDelays: []time.Duration{time.Second, time.Second}}, true},
		{"sub-millisecond delay", Topology{Name: "n", WaitDelays: []time.Duration{1500 * time.Microsecond}}, true},
		{"zero delay", Topology{Name: "n", WaitDelays: []time.Duration{0}}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if err := tt.topo.validate(); (err != nil) != tt.wantErr {
				t.Errorf("validate() = %v, want error: %v", err, tt.wantErr)
			}
		})
	}
}
