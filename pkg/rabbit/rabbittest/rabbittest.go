// Package rabbittest helps integration tests of the packages that use pkg/rabbit: a
// topology of their own that is deleted when the test ends, and a running connection.
package rabbittest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"notify/pkg/rabbit"
	"notify/pkg/testenv"
)

// Topology returns topo renamed to a name no other test uses (prefix, the test's name and
// a random suffix); its queues and exchange are deleted when the test ends, after the
// connections started later have closed.
func Topology(t testing.TB, amqpURL, prefix string, topo rabbit.Topology) rabbit.Topology {
	t.Helper()
	topo.Name = fmt.Sprintf("test.%s.%s.%08x", prefix, strings.NewReplacer("/", ".", " ", "_").Replace(t.Name()), rand.Uint32())
	t.Cleanup(func() { Delete(t, amqpURL, topo) })
	return topo
}

// Delete removes a topology's queues and exchange.
func Delete(t testing.TB, amqpURL string, topo rabbit.Topology) {
	t.Helper()
	conn, err := amqp.Dial(amqpURL)
	if err != nil {
		t.Errorf("rabbittest: delete %s: dial: %v", topo.Name, err)
		return
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Errorf("rabbittest: delete %s: channel: %v", topo.Name, err)
		return
	}
	defer ch.Close()
	for _, q := range topo.Queues() {
		if _, err := ch.QueueDelete(q, false, false, false); err != nil {
			t.Errorf("rabbittest: delete queue %s: %v", q, err)
			return
		}
	}
	if err := ch.ExchangeDelete(topo.Exchange(), false, false); err != nil {
		t.Errorf("rabbittest: delete exchange %s: %v", topo.Exchange(), err)
	}
}

// StartConn runs a Conn until the test ends and returns it once it is connected and its
// topology (if any) is declared.
func StartConn(t testing.TB, amqpURL string, opts rabbit.ConnOptions) *rabbit.Conn {
	t.Helper()
	if opts.DrainTimeout == 0 {
		opts.DrainTimeout = 5 * time.Second
	}
	c := rabbit.NewConn(amqpURL, slog.New(slog.NewTextHandler(io.Discard, nil)), opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("rabbittest: Conn.Run: %v", err)
		}
	})
	readyCtx, readyCancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer readyCancel()
	if err := c.Ready(readyCtx); err != nil {
		t.Fatalf("rabbittest: Conn.Ready: %v", err)
	}
	return c
}

// BrokerName returns the management API's name of the connection whose client-given name
// (rabbit.ConnOptions.Name) is name. The API lists a connection only once its statistics
// are emitted (every 5 s by default), so it waits up to 15 s: look the name up before the
// moment the test wants to close the connection.
func BrokerName(t testing.TB, name string) string {
	t.Helper()
	base := testenv.ManagementURL(t)
	deadline := time.Now().Add(15 * time.Second)
	for {
		if found := findConnection(t, base, name); found != "" {
			return found
		}
		if time.Now().After(deadline) {
			t.Fatalf("rabbittest: connection %s not listed by the management API", name)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// CloseConnection force-closes a connection by its broker name (see BrokerName) through
// the management API, as a crash or a network failure would: nothing in flight on it gets
// settled.
func CloseConnection(t testing.TB, brokerName string) {
	t.Helper()
	base := testenv.ManagementURL(t)
	req, err := http.NewRequest(http.MethodDelete, base+"/api/connections/"+url.PathEscape(brokerName), nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Reason", "rabbittest: forced close")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("rabbittest: close connection %s: %v", brokerName, err)
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		t.Fatalf("rabbittest: close connection %s: %s", brokerName, resp.Status)
	}
}

// findConnection returns the broker's name of the connection a client named name, or "".
func findConnection(t testing.TB, base, name string) string {
	t.Helper()
	resp, err := http.Get(base + "/api/connections?columns=name,client_properties")
	if err != nil {
		t.Fatalf("rabbittest: list connections: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("rabbittest: list connections: %s", resp.Status)
	}
	var conns []struct {
		Name             string `json:"name"`
		ClientProperties struct {
			ConnectionName string `json:"connection_name"`
		} `json:"client_properties"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&conns); err != nil {
		t.Fatalf("rabbittest: decode connections: %v", err)
	}
	for _, c := range conns {
		if c.ClientProperties.ConnectionName == name {
			return c.Name
		}
	}
	return ""
}
