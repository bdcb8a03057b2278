package e2e

import (
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"google.golang.org/protobuf/proto"

	busv1 "notify/proto/gen/notify/bus/v1"
)

// TestStatusEventsInOrder: a domain service's own queue bound to the events exchange
// receives, in order, the status events of a notification whose token fails once and is
// delivered on its retry: pending, retrying, delivered, each with routing key
// "<status>.<type>" and a StatusEvent body.
func TestStatusEventsInOrder(t *testing.T) {
	s := newStack(t)
	s.start("fcm-emulator", nil)
	s.start("producer", nil)
	retry := map[string]string{"RETRY_BASE_DELAY": "400ms", "RETRY_MAX_DELAY": "800ms"}
	s.start("sender", retry)
	s.start("retrier", retry)
	notifications, devices, _ := s.clients()

	// The subscriber: an exclusive queue bound with "#" (every status of every type).
	conn, err := amqp.Dial(s.amqpURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.QueueBind(q.Name, "#", s.topology+".events", false, nil); err != nil {
		t.Fatalf("bind to %s.events: %v", s.topology, err)
	}
	deliveries, err := ch.Consume(q.Name, "", true, true, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}

	// flaky1-: the emulator fails the token once, then accepts it.
	registerOne(t, devices, "eve", "flaky1-eve")
	id := publishTo(t, notifications, "eve")

	want := []string{"pending", "retrying", "delivered"}
	var got []string
	timeout := time.After(time.Minute)
	for len(got) < len(want) {
		select {
		case d := <-deliveries:
			var ev busv1.StatusEvent
			if err := proto.Unmarshal(d.Body, &ev); err != nil {
				t.Fatalf("event body: %v", err)
			}
			if ev.GetNotificationId() != id {
				continue
			}
			if d.RoutingKey != ev.GetStatus()+".e2e.retry" || d.Type != "notify.bus.v1.StatusEvent" || ev.GetType() != "e2e.retry" ||
				ev.GetCaller() != "e2e-admin" || ev.GetTime() == nil {
				t.Errorf("event %q (%s): %v", d.RoutingKey, d.Type, &ev)
			}
			if ev.GetStatus() == "delivered" && (ev.GetCounts().GetDelivered() != 1 || ev.GetCounts().GetTotal() != 1) {
				t.Errorf("delivered event counts %v, want 1 of 1 delivered", ev.GetCounts())
			}
			got = append(got, ev.GetStatus())
		case <-timeout:
			t.Fatalf("after a minute the events were %v, want %v", got, want)
		}
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("events %v, want %v in this order", got, want)
		}
	}
	// Nothing more for it.
	select {
	case d := <-deliveries:
		var ev busv1.StatusEvent
		if proto.Unmarshal(d.Body, &ev) == nil && ev.GetNotificationId() == id {
			t.Errorf("extra event %q after delivered", d.RoutingKey)
		}
	case <-time.After(2 * time.Second):
	}
}
