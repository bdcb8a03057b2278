package rabbit

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"notify/pkg/testenv"
)

// TestBrokerMetrics: notify_rabbitmq_connected follows the connection through a forced
// close and the reconnection; QueueDepths shows the messages waiting in a queue and its
// consumers, and no series for a queue that does not exist.
func TestBrokerMetrics(t *testing.T) {
	t.Parallel()
	amqpURL := testenv.AMQPURL(t)
	testenv.ManagementURL(t)
	topo := newTopology(t, amqpURL)
	reg := prometheus.NewRegistry()
	hooks := NewMetrics(reg)
	connected := func() float64 {
		return gatherValue(t, reg, "notify_rabbitmq_connected", nil)
	}
	if got := connected(); got != 0 {
		t.Errorf("notify_rabbitmq_connected before Run = %v, want 0", got)
	}
	conn := startConn(t, amqpURL, ConnOptions{Name: topo.Name, Topology: &topo, Hooks: hooks, MinBackoff: time.Second, MaxBackoff: time.Second})
	if got := connected(); got != 1 {
		t.Errorf("notify_rabbitmq_connected once ready = %v, want 1", got)
	}

	pub := NewPublisher(conn, topo.Exchange(), PublisherOptions{})
	if err := pub.Publish(t.Context(), messages("depth", 3, SendKey, []byte("x"))...); err != nil {
		t.Fatal(err)
	}
	missing := topo.Name + ".missing"
	depths := NewQueueDepths(conn, reg, testLogger(t), time.Second, topo.SendQueue(), missing, topo.DeadQueue())
	waitFor(t, 15*time.Second, "3 messages in the send queue", func() bool {
		depths.Sample(t.Context())
		return gatherValue(t, reg, "notify_rabbitmq_queue_messages", map[string]string{"queue": topo.SendQueue()}) == 3
	})
	for _, tt := range []struct {
		name, queue string
		want        float64
	}{
		{"notify_rabbitmq_queue_consumers", topo.SendQueue(), 0},
		{"notify_rabbitmq_queue_messages", topo.DeadQueue(), 0},
	} {
		if got := gatherValue(t, reg, tt.name, map[string]string{"queue": tt.queue}); got != tt.want {
			t.Errorf("%s{queue=%q} = %v, want %v", tt.name, tt.queue, got, tt.want)
		}
	}
	if n := testutil.CollectAndCount(depths.messages); n != 2 {
		t.Errorf("notify_rabbitmq_queue_messages has %d series, want 2 (none for %s)", n, missing)
	}

	closeConnections(t, findConnections(t, topo.Name, 1, nil))
	waitFor(t, 10*time.Second, "notify_rabbitmq_connected 0 after a forced close", func() bool { return connected() == 0 })
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	if err := conn.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	if got := connected(); got != 1 {
		t.Errorf("notify_rabbitmq_connected after reconnecting = %v, want 1", got)
	}
	if got := gatherValue(t, reg, "notify_rabbitmq_connections_total", nil); got != 2 {
		t.Errorf("notify_rabbitmq_connections_total = %v, want 2", got)
	}
}

// gatherValue returns the value of the series of name with exactly labels (nil: none), or -1
// when there is no such series.
func gatherValue(t testing.TB, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	metrics:
		for _, m := range f.GetMetric() {
			if len(m.GetLabel()) != len(labels) {
				continue
			}
			for _, l := range m.GetLabel() {
				if labels[l.GetName()] != l.GetValue() {
					continue metrics
				}
			}
			return m.GetGauge().GetValue() + m.GetCounter().GetValue()
		}
	}
	return -1
}
