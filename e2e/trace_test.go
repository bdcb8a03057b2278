package e2e

import (
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
	"time"

	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	"google.golang.org/grpc/metadata"

	"notify/pkg/tracing/tracingtest"
	notifyv1 "notify/proto/gen/notify/v1"
)

// traceOf is the spans of one trace, as the collector received them from every service.
type traceOf []tracingtest.Span

func spansOfTrace(c *tracingtest.Collector, traceID string) traceOf {
	var out traceOf
	for _, s := range c.Spans() {
		if hex.EncodeToString(s.TraceId) == traceID {
			out = append(out, s)
		}
	}
	return out
}

// named returns the spans of the trace named name sent by service.
func (tr traceOf) named(service, name string) []tracingtest.Span {
	var out []tracingtest.Span
	for _, s := range tr {
		if s.Service == service && s.Name == name {
			out = append(out, s)
		}
	}
	return out
}

// childrenOf returns the spans named name, sent by service, whose parent is parent.
func (tr traceOf) childrenOf(parent tracingtest.Span, service, name string) []tracingtest.Span {
	var out []tracingtest.Span
	for _, s := range tr.named(service, name) {
		if hex.EncodeToString(s.ParentSpanId) == hex.EncodeToString(parent.SpanId) {
			out = append(out, s)
		}
	}
	return out
}

// String draws the trace as its services and span names with their parents, for failures.
func (tr traceOf) String() string {
	var b strings.Builder
	for _, s := range tr {
		fmt.Fprintf(&b, "\n  %s %s span=%x parent=%x", s.Service, s.Name, s.SpanId, s.ParentSpanId)
	}
	return b.String()
}

func strAttr(s tracingtest.Span, key string) string {
	for _, kv := range s.Attributes {
		if kv.GetKey() == key {
			return kv.GetValue().GetStringValue()
		}
	}
	return ""
}

func intAttr(s tracingtest.Span, key string) (int64, bool) {
	for _, kv := range s.Attributes {
		if kv.GetKey() == key {
			if v, ok := kv.GetValue().GetValue().(*commonpb.AnyValue_IntValue); ok {
				return v.IntValue, true
			}
		}
	}
	return 0, false
}

// TestOneTraceFromPublishToFCM: with OTEL_* set on every service, a Publish carrying the
// caller's traceparent is one trace from the caller to FCM and back through the retry
// queue:
//
//	caller (the test's own span id)
//	└─ producer  notify.v1.NotificationService/Publish
//	   ├─ producer  producer.store
//	   └─ producer  outbox.relay
//	      └─ sender  sender.task
//	         ├─ sender  sender.load
//	         ├─ sender  sender.audience
//	         ├─ sender  pace.wait            (notify.tokens 1)
//	         ├─ sender  fcm.multicast        (notify.tokens 1, notify.transient 1)
//	         ├─ sender  delivery.hand_off
//	         │  └─ retrier  retrier.task
//	         │     ├─ retrier  retrier.load
//	         │     ├─ retrier  pace.wait
//	         │     ├─ retrier  fcm.multicast  (notify.delivered 1)
//	         │     └─ retrier  delivery.record
//	         └─ sender  delivery.record
//
// A notification that exhausts its attempts continues into the deadletter service
// (deadletter.task under the last hand-off, with deadletter.store), its alert is a
// deadletter.alert trace linked to it, and its replay is a new trace whose producer.replay
// root links to the original one and goes on to outbox.relay and sender.task.
func TestOneTraceFromPublishToFCM(t *testing.T) {
	s := newStack(t)
	collector := tracingtest.Start(t)
	traced := func(extra map[string]string) map[string]string {
		env := map[string]string{"OTEL_BSP_SCHEDULE_DELAY": "100"} // export within moments
		for _, kv := range collector.Env() {
			k, v, _ := strings.Cut(kv, "=")
			env[k] = v
		}
		for k, v := range extra {
			env[k] = v
		}
		return env
	}
	retry := map[string]string{"RETRY_BASE_DELAY": "200ms", "RETRY_MAX_DELAY": "400ms", "RETRY_MAX_ATTEMPTS": "2"}
	s.start("fcm-emulator", map[string]string{"FCM_EMULATOR_UNAVAILABLE_RETRY_AFTER": "180s"})
	s.start("producer", traced(nil))
	s.start("sender", traced(retry))
	s.start("retrier", traced(retry))
	s.start("deadletter", traced(map[string]string{"ALERT_INTERVAL": "200ms", "ALERT_MIN_INTERVAL": "200ms"}))
	notifications, devices, admin := s.clients()

	// flaky1-: INTERNAL once, then delivered: one retry hop.
	registerOne(t, devices, "tia", "flaky1-tia")
	traceID, callerSpan := randomHex(16), randomHex(8)
	ctx := metadata.AppendToOutgoingContext(ctxT(t), "traceparent", "00-"+traceID+"-"+callerSpan+"-01")
	resp, err := notifications.Publish(ctx, &notifyv1.PublishRequest{
		Type:       "e2e.trace",
		Recipients: &notifyv1.Recipients{Target: &notifyv1.Recipients_UserIds{UserIds: &notifyv1.UserIDs{UserIds: []string{"tia"}}}},
		Content:    &notifyv1.Content{Title: "trace me"},
	})
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	waitFor(t, 30*time.Second, "the flaky notification to be delivered", func() bool {
		got, err := admin.GetNotification(ctxT(t), &notifyv1.GetNotificationRequest{NotificationId: resp.GetNotificationId()})
		return err == nil && got.GetNotification().GetStatus() == notifyv1.NotificationStatus_NOTIFICATION_STATUS_DELIVERED
	})

	var tr traceOf
	var retried []tracingtest.Span
	waitFor(t, 30*time.Second, "the retrier's spans to be exported", func() bool {
		tr = spansOfTrace(collector, traceID)
		retried = nil
		for _, task := range tr.named("retrier", "retrier.task") {
			retried = append(retried, tr.childrenOf(task, "retrier", "delivery.record")...)
		}
		delivered := false // the last status event's relay span, exported after the record
		for _, r := range tr.named("producer", "outbox.relay") {
			delivered = delivered || strAttr(r, "messaging.rabbitmq.destination.routing_key") == "delivered.e2e.trace"
		}
		return len(retried) > 0 && delivered
	})
	one := func(got []tracingtest.Span, what string) tracingtest.Span {
		t.Helper()
		if len(got) != 1 {
			t.Fatalf("%d spans %s, want 1; the trace:%v", len(got), what, tr)
		}
		return got[0]
	}
	publish := one(tr.named("producer", "notify.v1.NotificationService/Publish"), "Publish in the producer")
	if p := hex.EncodeToString(publish.ParentSpanId); p != callerSpan {
		t.Errorf("Publish's parent is %s, want the caller's span %s", p, callerSpan)
	}
	one(tr.childrenOf(publish, "producer", "producer.store"), "producer.store under Publish")
	// Under Publish: the send task's trip to the broker, and each status event's (pending,
	// retrying, delivered), which carry the notification's trace to subscribers.
	var tasks []tracingtest.Span
	events := map[string]bool{}
	for _, r := range tr.childrenOf(publish, "producer", "outbox.relay") {
		key := strAttr(r, "messaging.rabbitmq.destination.routing_key")
		if strings.HasSuffix(key, ".e2e.trace") {
			events[strings.TrimSuffix(key, ".e2e.trace")] = true
		} else {
			tasks = append(tasks, r)
		}
	}
	relay := one(tasks, "outbox.relay of the send task under Publish")
	for _, status := range []string{"pending", "retrying", "delivered"} {
		if !events[status] {
			t.Errorf("no outbox.relay of the %s status event under Publish; got %v", status, events)
		}
	}
	send := one(tr.childrenOf(relay, "sender", "sender.task"), "sender.task under outbox.relay")
	one(tr.childrenOf(send, "sender", "sender.load"), "sender.load under sender.task")
	one(tr.childrenOf(send, "sender", "sender.audience"), "sender.audience under sender.task")
	if n, _ := intAttr(one(tr.childrenOf(send, "sender", "pace.wait"), "pace.wait under sender.task"), "notify.tokens"); n != 1 {
		t.Errorf("the sender's pace.wait notify.tokens = %d, want 1", n)
	}
	first := one(tr.childrenOf(send, "sender", "fcm.multicast"), "fcm.multicast under sender.task")
	if n, _ := intAttr(first, "notify.tokens"); n != 1 {
		t.Errorf("the first multicast's notify.tokens = %d, want 1", n)
	}
	if n, _ := intAttr(first, "notify.transient"); n != 1 {
		t.Errorf("the first multicast's notify.transient = %d, want 1 (flaky1- fails once)", n)
	}
	one(tr.childrenOf(send, "sender", "delivery.record"), "delivery.record under sender.task")
	handOff := one(tr.childrenOf(send, "sender", "delivery.hand_off"), "delivery.hand_off under sender.task")
	retry1 := one(tr.childrenOf(handOff, "retrier", "retrier.task"), "retrier.task under delivery.hand_off")
	one(tr.childrenOf(retry1, "retrier", "retrier.load"), "retrier.load under retrier.task")
	one(tr.childrenOf(retry1, "retrier", "pace.wait"), "pace.wait under retrier.task")
	second := one(tr.childrenOf(retry1, "retrier", "fcm.multicast"), "fcm.multicast under retrier.task")
	if n, _ := intAttr(second, "notify.delivered"); n != 1 {
		t.Errorf("the retried multicast's notify.delivered = %d, want 1", n)
	}
	t.Logf("the trace:%v", tr)

	// unavailable-: fails every time; two attempts, then the dead letter.
	registerOne(t, devices, "ulf", "unavailable-ulf")
	deadTrace := randomHex(16)
	ctx = metadata.AppendToOutgoingContext(ctxT(t), "traceparent", "00-"+deadTrace+"-"+randomHex(8)+"-01")
	dead, err := notifications.Publish(ctx, &notifyv1.PublishRequest{
		Type:       "e2e.trace",
		Recipients: &notifyv1.Recipients{Target: &notifyv1.Recipients_UserIds{UserIds: &notifyv1.UserIDs{UserIds: []string{"ulf"}}}},
		Content:    &notifyv1.Content{Title: "trace my death"},
	})
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	waitFor(t, 30*time.Second, "the deadletter's span in the notification's trace", func() bool {
		tr = spansOfTrace(collector, deadTrace)
		for _, task := range tr.named("retrier", "retrier.task") {
			for _, h := range tr.childrenOf(task, "retrier", "delivery.hand_off") {
				if len(tr.childrenOf(h, "deadletter", "deadletter.task")) > 0 {
					return true
				}
			}
		}
		return false
	})
	task := one(tr.named("deadletter", "deadletter.task"), "deadletter.task")
	one(tr.childrenOf(task, "deadletter", "deadletter.store"), "deadletter.store under deadletter.task")
	// The alert (to the log: no Slack is set) is a trace of its own linked to the dead letter's.
	waitFor(t, 30*time.Second, "a deadletter.alert span linked to the dead letter's trace", func() bool {
		for _, sp := range collector.Spans() {
			if sp.Service != "deadletter" || sp.Name != "deadletter.alert" || hex.EncodeToString(sp.TraceId) == deadTrace {
				continue
			}
			for _, l := range sp.Links {
				if hex.EncodeToString(l.TraceId) == deadTrace {
					return true
				}
			}
		}
		return false
	})

	waitFor(t, 30*time.Second, "the notification to fail", func() bool {
		got, err := admin.GetNotification(ctxT(t), &notifyv1.GetNotificationRequest{NotificationId: dead.GetNotificationId()})
		return err == nil && got.GetNotification().GetStatus() == notifyv1.NotificationStatus_NOTIFICATION_STATUS_FAILED
	})
	if r := replay(t, admin, false, dead.GetNotificationId()); r.GetOutcome() != notifyv1.ReplayOutcome_REPLAY_OUTCOME_REPLAYED {
		t.Fatalf("replay: %v, want REPLAYED", r.GetOutcome())
	}
	// The replay's trace: a producer.replay root linked to the original trace, then the
	// relay and the sender again.
	waitFor(t, 30*time.Second, "the replay's trace to reach the sender", func() bool {
		for _, sp := range collector.Spans() {
			if sp.Service != "producer" || sp.Name != "producer.replay" {
				continue
			}
			linked := false
			for _, l := range sp.Links {
				linked = linked || hex.EncodeToString(l.TraceId) == deadTrace
			}
			if !linked {
				continue
			}
			if len(sp.ParentSpanId) != 0 {
				t.Fatalf("producer.replay has a parent %x, want a new trace's root", sp.ParentSpanId)
			}
			if hex.EncodeToString(sp.TraceId) == deadTrace {
				t.Fatal("producer.replay is in the original trace, want a new one linked to it")
			}
			tr = spansOfTrace(collector, hex.EncodeToString(sp.TraceId))
			for _, relay := range tr.childrenOf(sp, "producer", "outbox.relay") {
				if len(tr.childrenOf(relay, "sender", "sender.task")) > 0 {
					return true
				}
			}
		}
		return false
	})
}
