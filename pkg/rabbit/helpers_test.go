package rabbit

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"notify/pkg/testenv"
)

// Helpers for the integration tests: every test gets its own topology name and connection
// names, so tests run in parallel and never touch anything else on the broker.

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), nil))
}

// newTopology returns a topology with a unique name and deletes its queues and exchange when
// the test ends (after the connections registered later have closed).
func newTopology(t testing.TB, amqpURL string, delays ...time.Duration) Topology {
	t.Helper()
	name := fmt.Sprintf("test.%s.%08x", strings.ReplaceAll(t.Name(), "/", "."), rand.Uint32())
	topo := Topology{Name: name, WaitDelays: delays, DeliveryLimit: 20}
	t.Cleanup(func() { deleteTopology(t, amqpURL, topo) })
	return topo
}

func deleteTopology(t testing.TB, amqpURL string, topo Topology) {
	t.Helper()
	conn, err := amqp.Dial(amqpURL)
	if err != nil {
		t.Errorf("cleanup: dial: %v", err)
		return
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Errorf("cleanup: channel: %v", err)
		return
	}
	defer ch.Close()
	for _, q := range topo.Queues() {
		if _, err := ch.QueueDelete(q, false, false, false); err != nil {
			t.Errorf("cleanup: delete queue %s: %v", q, err)
			return
		}
	}
	if err := ch.ExchangeDelete(topo.Exchange(), false, false); err != nil {
		t.Errorf("cleanup: delete exchange %s: %v", topo.Exchange(), err)
	}
}

// startConn runs a Conn until the test ends and waits until it is ready.
func startConn(t testing.TB, amqpURL string, opts ConnOptions) *Conn {
	t.Helper()
	c := NewConn(amqpURL, testLogger(t), opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Conn.Run: %v", err)
		}
	})
	readyCtx, readyCancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer readyCancel()
	if err := c.Ready(readyCtx); err != nil {
		t.Fatalf("Conn.Ready: %v", err)
	}
	return c
}

// settlementLog records, through a Conn's Hooks, every settlement of every delivery by
// "queue message-id", and how many times each message was handed to its handler again in
// place; a settlement the broker refused fails the test.
type settlementLog struct {
	t       testing.TB
	mu      sync.Mutex
	settled map[string][]Settlement
	again   map[string]int
}

func newSettlementLog(t testing.TB) *settlementLog {
	return &settlementLog{t: t, settled: map[string][]Settlement{}, again: map[string]int{}}
}

func (l *settlementLog) hooks() Hooks {
	return Hooks{
		Settled: func(d *Delivery, s Settlement, err error) {
			if err != nil {
				l.t.Errorf("settle %s: %v", d.MessageID, err)
			}
			l.mu.Lock()
			defer l.mu.Unlock()
			l.settled[d.Queue+" "+d.MessageID] = append(l.settled[d.Queue+" "+d.MessageID], s)
		},
		HandledAgain: func(d *Delivery) {
			l.mu.Lock()
			defer l.mu.Unlock()
			l.again[d.MessageID]++
		},
	}
}

// byMessage returns a copy of the settlements so far.
func (l *settlementLog) byMessage() map[string][]Settlement {
	l.mu.Lock()
	defer l.mu.Unlock()
	return maps.Clone(l.settled)
}

// handledAgain returns a copy of the counts of tries in place so far, by message id.
func (l *settlementLog) handledAgain() map[string]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return maps.Clone(l.again)
}

// startConsumer runs a Consumer until the test ends (it stops before the Conn does).
func startConsumer(t testing.TB, c *Conn, queue string, h Handler, opts ConsumerOptions) {
	t.Helper()
	consumer := NewConsumer(c, queue, h, opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- consumer.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Consumer.Run(%s): %v", queue, err)
		}
	})
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// seen counts deliveries by MessageID.
type seen struct {
	mu     sync.Mutex
	counts map[string]int
	dups   int
}

func newSeen() *seen { return &seen{counts: map[string]int{}} }

func (s *seen) add(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.counts[id]++
	if s.counts[id] > 1 {
		s.dups++
	}
}

func (s *seen) unique() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.counts)
}

func (s *seen) duplicates() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dups
}

// ackAll is a handler that records every delivery in s and has it acked.
func ackAll(s *seen) Handler {
	return func(ctx context.Context, d *Delivery) error {
		s.add(d.MessageID)
		return nil
	}
}

func messages(prefix string, n int, key string, body []byte) []Message {
	msgs := make([]Message, n)
	for i := range msgs {
		msgs[i] = Message{RoutingKey: key, MessageID: fmt.Sprintf("%s-%d", prefix, i), Type: "test.v1.Msg", Body: body}
	}
	return msgs
}

// findConnections returns the broker's names for the want connections whose client-given
// names start with prefix, ignoring those in skip (already closed). The management API lists a
// connection only once its statistics are emitted (every 5s by default), so it polls.
func findConnections(t testing.TB, prefix string, want int, skip []string) []string {
	t.Helper()
	base := testenv.ManagementURL(t)
	deadline := time.Now().Add(15 * time.Second)
	for {
		var names []string
		for _, name := range listConnections(t, base, prefix) {
			if !slices.Contains(skip, name) {
				names = append(names, name)
			}
		}
		if len(names) == want {
			return names
		}
		if time.Now().After(deadline) {
			t.Fatalf("found connections %q named %s*, want %d", names, prefix, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// closeConnections force-closes connections through the management API.
func closeConnections(t testing.TB, names []string) {
	t.Helper()
	base := testenv.ManagementURL(t)
	for _, name := range names {
		req, err := http.NewRequest(http.MethodDelete, base+"/api/connections/"+url.PathEscape(name), nil)
		if err != nil {
			t.Fatalf("close connection request: %v", err)
		}
		req.Header.Set("X-Reason", "rabbit test: forced close")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("close connection %s: %v", name, err)
		}
		resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			t.Fatalf("close connection %s: %s", name, resp.Status)
		}
	}
}

// listConnections returns the broker's names of the connections whose client-given names
// start with prefix.
func listConnections(t testing.TB, base, prefix string) []string {
	t.Helper()
	resp, err := http.Get(base + "/api/connections?columns=name,client_properties")
	if err != nil {
		t.Fatalf("list connections: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("list connections: %s", resp.Status)
	}
	var conns []struct {
		Name             string `json:"name"`
		ClientProperties struct {
			ConnectionName string `json:"connection_name"`
		} `json:"client_properties"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&conns); err != nil {
		t.Fatalf("decode connections: %v", err)
	}
	var names []string
	for _, c := range conns {
		if strings.HasPrefix(c.ClientProperties.ConnectionName, prefix) {
			names = append(names, c.Name)
		}
	}
	return names
}
