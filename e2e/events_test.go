package e2e

import (
	"slices"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	busv1 "notify/proto/gen/notify/bus/v1"
	notifyv1 "notify/proto/gen/notify/v1"
)

// TestStatusEventsInOrder: a domain service's own queue bound to the events exchange
// receives, in order, the status events of a notification whose token fails once and is
// delivered on its retry (pending, retrying, delivered) and of a scheduled one (scheduled,
// pending when it falls due, delivered), each with routing key "<status>.<type>" and a
// StatusEvent body.
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

	// flaky1-: the emulator fails the token once, then accepts it. The second notification
	// is scheduled: its send task goes out only once it is pending.
	registerOne(t, devices, "eve", "flaky1-eve")
	registerOne(t, devices, "sam", "sam-token")
	id := publishTo(t, notifications, "eve")
	resp, err := notifications.Publish(ctxT(t), &notifyv1.PublishRequest{
		Type:       "e2e.retry",
		Recipients: &notifyv1.Recipients{Target: &notifyv1.Recipients_UserIds{UserIds: &notifyv1.UserIDs{UserIds: []string{"sam"}}}},
		Content:    &notifyv1.Content{Title: "later"},
		Options:    &notifyv1.Options{SendAt: timestamppb.New(time.Now().Add(2 * time.Second))},
	})
	if err != nil {
		t.Fatalf("Publish scheduled: %v", err)
	}
	later := resp.GetNotificationId()

	want := map[string][]string{id: {"pending", "retrying", "delivered"}, later: {"scheduled", "pending", "delivered"}}
	got := map[string][]string{}
	timeout := time.After(time.Minute)
	for len(got[id]) < len(want[id]) || len(got[later]) < len(want[later]) {
		select {
		case d := <-deliveries:
			var ev busv1.StatusEvent
			if err := proto.Unmarshal(d.Body, &ev); err != nil {
				t.Fatalf("event body: %v", err)
			}
			nid := ev.GetNotificationId()
			if _, ours := want[nid]; !ours {
				continue
			}
			if d.RoutingKey != ev.GetStatus()+".e2e.retry" || d.Type != "notify.bus.v1.StatusEvent" || ev.GetType() != "e2e.retry" ||
				ev.GetCaller() != "e2e-admin" || ev.GetTime() == nil {
				t.Errorf("event %q (%s): %v", d.RoutingKey, d.Type, &ev)
			}
			if ev.GetStatus() == "delivered" && (ev.GetCounts().GetDelivered() != 1 || ev.GetCounts().GetTotal() != 1) {
				t.Errorf("delivered event counts %v, want 1 of 1 delivered", ev.GetCounts())
			}
			got[nid] = append(got[nid], ev.GetStatus())
			if len(got[nid]) > len(want[nid]) {
				t.Errorf("extra event %q for %s after %v", d.RoutingKey, nid, want[nid])
			}
		case <-timeout:
			t.Fatalf("after a minute the events were %v, want %v", got, want)
		}
	}
	for nid := range want {
		if !slices.Equal(got[nid], want[nid]) {
			t.Fatalf("events of %s: %v, want %v in this order", nid, got[nid], want[nid])
		}
	}
	// Nothing more for either.
	select {
	case d := <-deliveries:
		var ev busv1.StatusEvent
		if proto.Unmarshal(d.Body, &ev) == nil && want[ev.GetNotificationId()] != nil {
			t.Errorf("extra event %q after delivered", d.RoutingKey)
		}
	case <-time.After(2 * time.Second):
	}
}
