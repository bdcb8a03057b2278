// Package rabbittest helps integration tests of the packages that use pkg/rabbit: a
// topology of their own that is deleted when the test ends, and a running connection.
package rabbittest

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"notify/pkg/rabbit"
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
