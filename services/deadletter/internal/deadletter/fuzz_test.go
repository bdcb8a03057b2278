package deadletter

import (
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"
	"google.golang.org/protobuf/proto"

	"notify/pkg/rabbit"
	busv1 "notify/proto/gen/notify/bus/v1"
)

// storable reports whether PostgreSQL can hold s in a text column: no NUL, valid UTF-8.
func storable(s string) bool { return strings.IndexByte(s, 0) < 0 && utf8.ValidString(s) }

// FuzzClassify feeds Classify whatever the dead-letter queue may carry: our tasks, the
// broker's dead-lettered work and foreign or broken messages, with fuzzed bodies, types,
// ids and death headers. Classify cannot fail, so the row it returns must always be
// storable: a message the database refuses would be requeued forever.
func FuzzClassify(f *testing.F) {
	const id = "0b7e6b58-2f4e-4a53-9a1e-2a5f0c3f9d11"
	mustMarshal := func(m proto.Message) []byte {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	dead := mustMarshal(&busv1.DeadLetterTask{NotificationId: id, Reason: "retries_exhausted", ErrorCode: "UNAVAILABLE",
		Attempts: 5, Tokens: []string{"t1"}, OriginalType: typeRetry, Original: []byte{1, 2}})
	send := mustMarshal(&busv1.SendTask{NotificationId: id, Cause: "publish"})
	retry := mustMarshal(&busv1.RetryTask{NotificationId: id, Tokens: []string{"t1", "t2"}, Attempt: 3, LastErrorMessage: "try later"})
	f.Add(typeDeadLetter, "m-1", dead, "", "", int64(0), uint8(0))
	f.Add(typeSend, "", send, "rejected", "notify.send", int64(1), uint8(1))
	f.Add(typeRetry, "m-2", retry, "expired", "notify.retry.wait.1", int64(3), uint8(2))
	f.Add(typeRetry, "", retry, "", "", int64(0), uint8(0))
	f.Add("some.Other", "\x00", []byte("hello"), "", "", int64(0), uint8(0))
	f.Add(typeSend, "\xff\xfe", []byte{0xff, 0xff, 0xff}, "delivery_limit", "\x00q", int64(-1), uint8(3))
	f.Add(typeDeadLetter, "", []byte{0x0a, 0x03, 'n', 0x00, 0xff}, "\xff", "", int64(1<<62), uint8(1))
	f.Add(typeSend, "", mustMarshal(&busv1.SendTask{NotificationId: "not-a-uuid\x00"}), "rejected", "", int64(2), uint8(2))
	f.Add("\x00type\xff", strings.Repeat("k", 300), []byte{}, "maxlen", "q", int64(0), uint8(3))
	f.Fuzz(func(t *testing.T, typ, messageID string, body []byte, reason, queue string, count int64, shape uint8) {
		headers := map[string]any{}
		switch shape % 4 {
		case 1:
			headers["x-death"] = []any{amqp.Table{"reason": reason, "queue": queue, "count": count}}
		case 2:
			headers["x-first-death-reason"] = reason
			headers["x-first-death-queue"] = queue
			headers[rabbit.AttemptHeader] = int32(count)
		case 3:
			headers["x-death"] = []any{reason, map[string]any{"count": count}}
			headers["x-notify-reason"] = reason
			headers[queue] = []any{[]byte(reason), float64(count), amqp.Decimal{Scale: 2, Value: int32(count)}}
		}
		l := Classify(&rabbit.Delivery{Type: typ, MessageID: messageID, Body: body, Headers: headers})

		if l.Key == "" || l.Reason == "" {
			t.Fatalf("letter without a key or reason: %+v", l)
		}
		for name, s := range map[string]string{"key": l.Key, "reason": l.Reason, "error_code": l.ErrorCode,
			"error_message": l.ErrorMessage, "message_type": l.MessageType} {
			if !storable(s) {
				t.Fatalf("%s %q cannot be stored", name, s)
			}
		}
		for _, tok := range l.Tokens {
			if !storable(tok) {
				t.Fatalf("token %q cannot be stored", tok)
			}
		}
		if l.NotificationID != "" {
			if _, err := uuid.Parse(l.NotificationID); err != nil {
				t.Fatalf("notification id %q is not a UUID", l.NotificationID)
			}
		}
		b, err := json.Marshal(l.Headers)
		if err != nil || !storable(string(b)) {
			t.Fatalf("headers do not marshal to storable JSON: %v", err)
		}
		if strings.Contains(string(b), `\u0000`) {
			t.Fatalf("headers JSON holds a NUL escape jsonb refuses: %s", b)
		}
		if l.NeverSent && (typ != typeSend || l.NotificationID == "") {
			t.Fatalf("NeverSent on a %q without a notification: %+v", typ, l)
		}
	})
}
