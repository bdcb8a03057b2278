package rabbit

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"notify/pkg/testenv"
)

// TestCheckDeadBroker: a Conn whose broker port is closed reports why it is not connected,
// and ErrStopped once Run has returned.
func TestCheckDeadBroker(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()

	c := NewConn("amqp://guest:guest@"+addr+"/", testLogger(t), ConnOptions{MaxBackoff: 200 * time.Millisecond})
	if err := c.Check(context.Background()); err == nil || !strings.Contains(err.Error(), "not connected yet") {
		t.Errorf("Check before Run = %v, want not connected yet", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	waitFor(t, 10*time.Second, "a dial error in Check", func() bool {
		err := c.Check(context.Background())
		return err != nil && strings.Contains(err.Error(), "connection refused")
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if err := c.Check(context.Background()); !errors.Is(err, ErrStopped) {
		t.Errorf("Check after Run = %v, want ErrStopped", err)
	}
}

// TestCheckLiveBroker: Conn.Check and Consumer.Check pass while connected and subscribed,
// fail while the connection is gone, and pass again once the consumer has re-subscribed.
func TestCheckLiveBroker(t *testing.T) {
	t.Parallel()
	amqpURL := testenv.AMQPURL(t)
	testenv.ManagementURL(t)
	topo := newTopology(t, amqpURL)
	// A reconnect backoff of at least 500ms leaves the test time to see the checks fail.
	conn := startConn(t, amqpURL, ConnOptions{Name: topo.Name, Topology: &topo, MinBackoff: time.Second, MaxBackoff: time.Second})
	if err := conn.Check(context.Background()); err != nil {
		t.Fatalf("Conn.Check once ready: %v", err)
	}

	consumer := NewConsumer(conn, topo.SendQueue(), func(context.Context, *Delivery) error { return nil }, ConsumerOptions{})
	if err := consumer.Check(context.Background()); err == nil || !strings.Contains(err.Error(), topo.SendQueue()) {
		t.Errorf("Consumer.Check before Run = %v, want an error naming the queue", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- consumer.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Consumer.Run: %v", err)
		}
	})
	waitFor(t, 10*time.Second, "the consumer subscribed", func() bool { return consumer.Check(context.Background()) == nil })

	closeConnections(t, findConnections(t, topo.Name, 1, nil))
	waitFor(t, 10*time.Second, "both checks failing", func() bool {
		return conn.Check(context.Background()) != nil && consumer.Check(context.Background()) != nil
	})
	waitFor(t, 20*time.Second, "both checks passing again", func() bool {
		return conn.Check(context.Background()) == nil && consumer.Check(context.Background()) == nil
	})

	cancel()
	if err := <-done; err != nil {
		t.Errorf("Consumer.Run: %v", err)
	}
	done <- nil // for the cleanup
	if err := consumer.Check(context.Background()); err == nil {
		t.Error("Consumer.Check after Run returned = nil, want an error")
	}
}
