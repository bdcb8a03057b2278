package deadletter

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	amqp "github.com/rabbitmq/amqp091-go"
	"google.golang.org/protobuf/proto"

	dlq "notify/pkg/deadletter"
	"notify/pkg/rabbit"
	busv1 "notify/proto/gen/notify/bus/v1"
)

func marshal(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// stableProtoErr undoes the protobuf module's deliberate randomisation of its error texts
// (a space or a non-breaking space), so that tests can compare them.
func stableProtoErr(s string) string { return strings.ReplaceAll(s, "\u00a0", " ") }

func TestClassify(t *testing.T) {
	t.Parallel()
	const id = "0b7e6b58-2f4e-4a53-9a1e-2a5f0c3f9d11"
	sendBody := marshal(t, &busv1.SendTask{NotificationId: id, Cause: "publish"})
	retryBody := marshal(t, &busv1.RetryTask{NotificationId: id, Tokens: []string{"t1", "t2"}, Attempt: 3,
		LastErrorCode: "UNAVAILABLE", LastErrorMessage: "try later"})
	rejectedFromSend := map[string]any{
		"x-death":              []any{amqp.Table{"reason": "rejected", "queue": "notify.send", "count": int64(1)}},
		"x-first-death-reason": "rejected", "x-first-death-queue": "notify.send",
	}
	// A retry task expires out of a wait queue into the retry queue before it is rejected
	// there: the latest death comes first in x-death, x-first-death-* name the expiry.
	rejectedAfterWait := map[string]any{
		"x-death": []any{
			amqp.Table{"reason": "rejected", "queue": "notify.retry", "count": int64(1)},
			amqp.Table{"reason": "expired", "queue": "notify.wait.10s", "count": int64(1)},
		},
		"x-first-death-reason": "expired", "x-first-death-queue": "notify.wait.10s",
	}
	overLimit := map[string]any{
		"x-death": []any{amqp.Table{"reason": "delivery_limit", "queue": "notify.retry", "count": int64(2)}},
	}

	tests := []struct {
		name string
		d    *rabbit.Delivery
		want Letter
	}{
		{
			name: "dead letter task with original",
			d: &rabbit.Delivery{MessageID: "m1", Type: typeDeadLetter,
				Body: marshal(t, &busv1.DeadLetterTask{NotificationId: id, Reason: "unknown_notification", ErrorMessage: "not found",
					Attempts: 1, Original: []byte("orig"), OriginalType: typeSend})},
			want: Letter{Key: "m1", NotificationID: id, Reason: "unknown_notification", ErrorMessage: "not found", Attempts: 1,
				Tokens: []string{}, MessageType: typeSend, Message: []byte("orig")},
		},
		{
			name: "dead letter task without reason or original",
			d: &rabbit.Delivery{MessageID: "m2", Type: typeDeadLetter, Headers: map[string]any{dlq.ReasonHeader: "retries_exhausted"},
				Body: marshal(t, &busv1.DeadLetterTask{NotificationId: id, ErrorCode: "INTERNAL", Attempts: 8, Tokens: []string{"a", "b\x00"}})},
			want: Letter{Key: "m2", NotificationID: id, Reason: "retries_exhausted", ErrorCode: "INTERNAL", Attempts: 8,
				Tokens: []string{"a", "b\uFFFD"}},
		},
		{
			name: "dead letter task with a notification id that is not a UUID",
			d:    &rabbit.Delivery{MessageID: "m3", Type: typeDeadLetter, Body: marshal(t, &busv1.DeadLetterTask{NotificationId: "n-1", Reason: "permanent_error"})},
			want: Letter{Key: "m3", Reason: "permanent_error", ErrorMessage: `notification id "n-1" is not a UUID`, Tokens: []string{}},
		},
		{
			name: "garbage claiming to be a dead letter task",
			d:    &rabbit.Delivery{MessageID: "m4", Type: typeDeadLetter, Body: []byte{0xff, 0xff, 0xff}},
			want: Letter{Key: "m4", Reason: dlq.ReasonUndecodable, MessageType: typeDeadLetter, Message: []byte{0xff, 0xff, 0xff},
				ErrorMessage: "body is not a notify.bus.v1.DeadLetterTask: proto: cannot parse invalid wire-format data"},
		},
		{
			name: "send task rejected on the send queue",
			d:    &rabbit.Delivery{MessageID: "outbox-7", Type: typeSend, Headers: rejectedFromSend, Body: sendBody},
			want: Letter{Key: "outbox-7", NotificationID: id, Reason: "rejected", MessageType: typeSend, Message: sendBody,
				ErrorMessage: "dead-lettered by the broker from notify.send (rejected)", NeverSent: true},
		},
		{
			name: "retry task rejected after waiting",
			d:    &rabbit.Delivery{MessageID: "r1", Type: typeRetry, Headers: rejectedAfterWait, Body: retryBody},
			want: Letter{Key: "r1", NotificationID: id, Reason: "rejected", ErrorCode: "UNAVAILABLE", Attempts: 3,
				Tokens: []string{"t1", "t2"}, MessageType: typeRetry, Message: retryBody,
				ErrorMessage: "dead-lettered by the broker from notify.retry (rejected); last error: try later"},
		},
		{
			name: "retry task over the delivery limit",
			d:    &rabbit.Delivery{MessageID: "r2", Type: typeRetry, Headers: overLimit, Body: retryBody},
			want: Letter{Key: "r2", NotificationID: id, Reason: "delivery_limit", ErrorCode: "UNAVAILABLE", Attempts: 3,
				Tokens: []string{"t1", "t2"}, MessageType: typeRetry, Message: retryBody,
				ErrorMessage: "dead-lettered by the broker from notify.retry (delivery_limit), 2 times; last error: try later"},
		},
		{
			name: "only x-first-death headers",
			d: &rabbit.Delivery{MessageID: "s2", Type: typeSend, Body: sendBody,
				Headers: map[string]any{"x-first-death-reason": "rejected", "x-first-death-queue": "q"}},
			want: Letter{Key: "s2", NotificationID: id, Reason: "rejected", MessageType: typeSend, Message: sendBody, NeverSent: true,
				ErrorMessage: "dead-lettered by the broker from q (rejected)"},
		},
		{
			name: "undecodable send task rejected",
			d:    &rabbit.Delivery{MessageID: "s3", Type: typeSend, Headers: rejectedFromSend, Body: []byte("not protobuf")},
			want: Letter{Key: "s3", Reason: dlq.ReasonUndecodable, MessageType: typeSend, Message: []byte("not protobuf"),
				ErrorMessage: "dead-lettered by the broker from notify.send (rejected); body is not a notify.bus.v1.SendTask: proto: cannot parse invalid wire-format data"},
		},
		{
			name: "send task without notification id rejected",
			d:    &rabbit.Delivery{MessageID: "s4", Type: typeSend, Headers: rejectedFromSend, Body: nil},
			want: Letter{Key: "s4", Reason: dlq.ReasonUndecodable, MessageType: typeSend,
				ErrorMessage: "dead-lettered by the broker from notify.send (rejected); body is not a notify.bus.v1.SendTask: no notification id"},
		},
		{
			name: "foreign message rejected",
			d:    &rabbit.Delivery{MessageID: "f1", Type: "acme.Order", Headers: rejectedFromSend, Body: []byte("{}")},
			want: Letter{Key: "f1", Reason: dlq.ReasonUndecodable, MessageType: "acme.Order", Message: []byte("{}"),
				ErrorMessage: `dead-lettered by the broker from notify.send (rejected); type "acme.Order" is none of notify.bus.v1.SendTask, notify.bus.v1.RetryTask`},
		},
		{
			name: "send task published straight to dead",
			d:    &rabbit.Delivery{MessageID: "s5", Type: typeSend, Body: sendBody},
			want: Letter{Key: "s5", NotificationID: id, Reason: ReasonUnknownMessage, MessageType: typeSend, Message: sendBody,
				ErrorMessage: "notify.bus.v1.SendTask published straight to the dead-letter queue"},
		},
		{
			name: "anything else",
			d:    &rabbit.Delivery{MessageID: "x\x00", Body: []byte("hello"), Headers: map[string]any{"h": "v\x00", "when": time.Unix(0, 0)}},
			want: Letter{Key: "x\uFFFD", Reason: ReasonUnknownMessage, Message: []byte("hello"),
				ErrorMessage: `message of type "" is not a notify.bus.v1.DeadLetterTask`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := Classify(tt.d)
			got.ErrorMessage = stableProtoErr(got.ErrorMessage)
			if diff := cmp.Diff(tt.want, got, cmpopts.IgnoreFields(Letter{}, "Headers")); diff != "" {
				t.Errorf("Classify() mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestClassifyKeyWithoutMessageID(t *testing.T) {
	t.Parallel()
	msg := func(deliveryCount int64, body string) *rabbit.Delivery {
		return &rabbit.Delivery{Type: "x", Body: []byte(body), Headers: map[string]any{
			"a": "b", "nested": amqp.Table{"n": int64(1)}, "x-delivery-count": deliveryCount,
		}}
	}
	first := Classify(msg(0, "body")).Key
	if len(first) != len("sha256:")+64 {
		t.Fatalf("key %q is not a sha256 digest", first)
	}
	tests := []struct {
		name     string
		d        *rabbit.Delivery
		wantSame bool
	}{
		{"redelivered", msg(3, "body"), true},
		{"other body", msg(0, "other"), false},
		{"other headers", &rabbit.Delivery{Type: "x", Body: []byte("body"), Headers: map[string]any{"a": "c"}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := Classify(tt.d).Key; (got == first) != tt.wantSame {
				t.Errorf("key %q vs first %q: same = %v, want %v", got, first, got == first, tt.wantSame)
			}
		})
	}
}

func TestClassifyHeaders(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		headers map[string]any
		want    map[string]any
	}{
		{"none", nil, nil},
		{
			name: "broker death",
			headers: map[string]any{
				"x-death": []any{amqp.Table{"reason": "rejected", "count": int64(1), "time": time.Unix(60, 0),
					"routing-keys": []any{"send"}}},
				rabbit.AttemptHeader: int32(2),
			},
			want: map[string]any{
				"x-death": []any{map[string]any{"reason": "rejected", "count": int64(1), "time": "1970-01-01T00:01:00Z",
					"routing-keys": []any{"send"}}},
				rabbit.AttemptHeader: int32(2),
			},
		},
		{
			name:    "what PostgreSQL refuses",
			headers: map[string]any{"k\x00": "v\x00\xff", "f": float32(1.5), "nan": math.NaN(), "d": amqp.Decimal{Scale: 2, Value: 150}, "b": []byte{0}},
			want:    map[string]any{"k\uFFFD": "v\uFFFD\uFFFD", "f": 1.5, "nan": "NaN", "d": "150e-2", "b": []byte{0}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := Classify(&rabbit.Delivery{MessageID: "m", Headers: tt.headers}).Headers
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("headers mismatch (-want +got):\n%s", diff)
			}
		})
	}
}
