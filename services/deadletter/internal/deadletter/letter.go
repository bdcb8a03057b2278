// Package deadletter stores every message that reaches the dead-letter queue as a
// dead_letters row, and alerts humans about stored rows, grouped and rate-limited.
//
// Storing comes first and alerting works only from stored rows, so an alert channel that is
// down delays alerts and never loses a dead letter.
package deadletter

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"
	"google.golang.org/protobuf/proto"

	dlq "notify/pkg/deadletter"
	"notify/pkg/rabbit"
	busv1 "notify/proto/gen/notify/bus/v1"
)

// Reasons this service gives itself; the others come from DeadLetterTask.reason or, for
// messages the broker dead-lettered, from the broker ("rejected", "delivery_limit", …).
const (
	// ReasonUnknownMessage is a message that is neither a DeadLetterTask nor something the
	// broker dead-lettered: nobody should be publishing it to the dead-letter queue.
	ReasonUnknownMessage = "unknown_message"
	// ReasonUnspecified is a DeadLetterTask that names no reason.
	ReasonUnspecified = "unspecified"
)

var (
	typeDeadLetter = string((&busv1.DeadLetterTask{}).ProtoReflect().Descriptor().FullName())
	typeSend       = string((&busv1.SendTask{}).ProtoReflect().Descriptor().FullName())
	typeRetry      = string((&busv1.RetryTask{}).ProtoReflect().Descriptor().FullName())
)

// Letter is one dead_letters row before it is stored.
type Letter struct {
	// Key is the row's message_id, the dedupe key: the AMQP MessageId, or for a message
	// without one a digest of its type, body and headers (see Classify).
	Key            string
	NotificationID string // a UUID, or empty when the message could not be attributed
	Reason         string
	ErrorCode      string
	ErrorMessage   string
	Attempts       int
	Tokens         []string
	MessageType    string
	Message        []byte         // the message concerned; nil when the columns say it all
	Headers        map[string]any // the AMQP headers, made safe for jsonb
	// NeverSent marks a SendTask the broker dead-lettered: its notification was never sent
	// and is marked failed (if still pending) so that it can be replayed.
	NeverSent bool
}

// death is what the broker's dead-lettering headers say about a message. They name the
// reason in the row and nothing else: our own logic never depends on them.
type death struct {
	reason string // "rejected", "delivery_limit", "expired", "maxlen"
	queue  string
	count  int64
}

// Classify turns a delivery from the dead-letter queue into a Letter. It cannot fail:
// whatever does not decode is kept raw, with reason "undecodable".
//
//   - A notify.bus.v1.DeadLetterTask (from the sender or retrier) gives its reason,
//     notification, error, attempts and tokens; the original message it carries is kept.
//   - A message the broker dead-lettered (x-death) is decoded by its AMQP Type as a
//     SendTask or RetryTask to attribute it; its reason is the broker's (the latest death).
//   - Anything else is kept with reason "unknown_message", or "undecodable" when it claims
//     to be one of ours and does not decode.
func Classify(d *rabbit.Delivery) Letter {
	headers := jsonSafeTable(d.Headers)
	l := Letter{
		Key:         clean(d.MessageID),
		Attempts:    d.Attempt(),
		MessageType: clean(d.Type),
		Message:     d.Body,
		Headers:     headers,
	}
	if l.Key == "" {
		l.Key = digest(d.Type, d.Body, headers)
	}
	dead, broker := deathOf(d.Headers)

	if d.Type == typeDeadLetter {
		var task busv1.DeadLetterTask
		if err := proto.Unmarshal(d.Body, &task); err != nil {
			return l.undecodable(fmt.Sprintf("body is not a %s: %v", typeDeadLetter, err))
		}
		reason, _ := d.Headers[dlq.ReasonHeader].(string)
		l.Reason = clean(cmp.Or(task.GetReason(), reason, ReasonUnspecified))
		l.ErrorCode = clean(task.GetErrorCode())
		l.ErrorMessage = clean(task.GetErrorMessage())
		l.Attempts = max(int(task.GetAttempts()), l.Attempts)
		l.Tokens = cleanAll(task.GetTokens())
		l.MessageType, l.Message = clean(task.GetOriginalType()), task.GetOriginal()
		if len(l.Message) == 0 {
			l.MessageType, l.Message = "", nil
		}
		l.attribute(task.GetNotificationId())
		return l
	}

	work, err := decodeWork(d.Type, d.Body)
	var foreign *foreignTypeError
	switch {
	case !broker && errors.As(err, &foreign):
		l.Reason = ReasonUnknownMessage
		l.ErrorMessage = fmt.Sprintf("message of type %q is not a %s", l.MessageType, typeDeadLetter)
		return l
	case !broker:
		l.Reason = ReasonUnknownMessage
		l.ErrorMessage = l.MessageType + " published straight to the dead-letter queue"
	default:
		l.Reason = clean(cmp.Or(dead.reason, "dead_lettered"))
		l.ErrorMessage = fmt.Sprintf("dead-lettered by the broker from %s (%s)", clean(cmp.Or(dead.queue, "an unknown queue")), l.Reason)
		if dead.count > 1 {
			l.ErrorMessage += fmt.Sprintf(", %d times", dead.count)
		}
	}
	if err != nil {
		return l.undecodable(l.ErrorMessage + "; " + err.Error())
	}
	l.NotificationID = work.notificationID
	l.Tokens = work.tokens
	l.Attempts = max(work.attempt, l.Attempts)
	l.ErrorCode = work.errorCode
	if work.errorMessage != "" {
		l.ErrorMessage += "; last error: " + work.errorMessage
	}
	l.NeverSent = broker && d.Type == typeSend
	return l
}

// foreignTypeError means a message is none of the tasks notify's work queues carry.
type foreignTypeError struct{ typ string }

func (e *foreignTypeError) Error() string {
	return fmt.Sprintf("type %q is none of %s, %s", e.typ, typeSend, typeRetry)
}

// workTask is what a SendTask or RetryTask says about its notification.
type workTask struct {
	notificationID string
	tokens         []string // nil for a SendTask: all of the notification's tokens
	attempt        int
	errorCode      string
	errorMessage   string
}

// decodeWork decodes a SendTask or RetryTask, by AMQP type, and insists on a UUID
// notification id: protobuf decoding is lenient, and random bytes can parse as a message
// with nothing but unknown fields.
func decodeWork(typ string, body []byte) (workTask, error) {
	var w workTask
	switch typ {
	case typeSend:
		var task busv1.SendTask
		if err := proto.Unmarshal(body, &task); err != nil {
			return w, fmt.Errorf("body is not a %s: %w", typ, err)
		}
		w.notificationID = task.GetNotificationId()
	case typeRetry:
		var task busv1.RetryTask
		if err := proto.Unmarshal(body, &task); err != nil {
			return w, fmt.Errorf("body is not a %s: %w", typ, err)
		}
		w = workTask{
			notificationID: task.GetNotificationId(),
			tokens:         cleanAll(task.GetTokens()),
			attempt:        int(task.GetAttempt()),
			errorCode:      clean(task.GetLastErrorCode()),
			errorMessage:   clean(task.GetLastErrorMessage()),
		}
	default:
		return w, &foreignTypeError{typ: clean(typ)}
	}
	if w.notificationID == "" {
		return w, fmt.Errorf("body is not a %s: no notification id", typ)
	}
	if _, err := uuid.Parse(w.notificationID); err != nil {
		return w, fmt.Errorf("body is not a %s: notification id %q: %w", typ, clean(w.notificationID), err)
	}
	return w, nil
}

// undecodable turns l into a row that keeps the raw message and says why it was not read.
func (l Letter) undecodable(why string) Letter {
	l.Reason = dlq.ReasonUndecodable
	l.ErrorMessage = clean(why)
	l.NotificationID, l.Tokens, l.NeverSent = "", nil, false
	return l
}

// attribute sets the notification id when it is a UUID (the column's type) and otherwise
// notes it in the error message, so that nothing the sender said is lost.
func (l *Letter) attribute(id string) {
	if id == "" {
		return
	}
	if _, err := uuid.Parse(id); err != nil {
		l.ErrorMessage = strings.TrimPrefix(l.ErrorMessage+fmt.Sprintf("; notification id %q is not a UUID", clean(id)), "; ")
		return
	}
	l.NotificationID = id
}

// deathOf reads the broker's dead-lettering headers. The most recent death comes first in
// x-death; x-first-death-* would name an earlier one (a retry task expires out of a wait
// queue before it is rejected on the retry queue), so it is only a fallback.
func deathOf(h map[string]any) (death, bool) {
	var d death
	deaths, _ := h["x-death"].([]any)
	found := len(deaths) > 0
	if found {
		if latest, ok := asTable(deaths[0]); ok {
			d.reason, _ = latest["reason"].(string)
			d.queue, _ = latest["queue"].(string)
			d.count, _ = latest["count"].(int64)
		}
	}
	if first, ok := h["x-first-death-reason"].(string); ok {
		found = true
		if d.reason == "" {
			d.reason = first
			d.queue, _ = h["x-first-death-queue"].(string)
		}
	}
	return d, found
}

func asTable(v any) (map[string]any, bool) {
	switch t := v.(type) {
	case amqp.Table:
		return t, true
	case map[string]any:
		return t, true
	}
	return nil, false
}

// digest is the dedupe key of a message without a MessageId: the same message redelivered
// gets the same key. x-delivery-count is left out because quorum queues change it on
// every redelivery.
func digest(typ string, body []byte, headers map[string]any) string {
	h := sha256.New()
	fmt.Fprintf(h, "%d:%s", len(typ), typ)
	fmt.Fprintf(h, "%d:", len(body))
	h.Write(body)
	stable := make(map[string]any, len(headers))
	for k, v := range headers {
		if k != "x-delivery-count" {
			stable[k] = v
		}
	}
	// Marshalling sorts map keys, and jsonSafe values always marshal.
	b, _ := json.Marshal(stable)
	h.Write(b)
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

// clean makes s storable in a PostgreSQL text column, which refuses NUL bytes and invalid
// UTF-8 (and so does jsonb): a message the database cannot store would otherwise be
// requeued forever.
func clean(s string) string {
	if strings.IndexByte(s, 0) < 0 && utf8.ValidString(s) {
		return s
	}
	return strings.ToValidUTF8(strings.ReplaceAll(s, "\x00", "\uFFFD"), "\uFFFD")
}

func cleanAll(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = clean(s)
	}
	return out
}

// jsonSafeTable converts AMQP header values into values that marshal to JSON jsonb
// accepts: nested tables and arrays are walked, strings cleaned, non-finite floats and
// unusual types written as text. Byte arrays marshal as base64.
func jsonSafeTable(t map[string]any) map[string]any {
	if t == nil {
		return nil
	}
	out := make(map[string]any, len(t))
	for k, v := range t {
		out[clean(k)] = jsonSafe(v)
	}
	return out
}

func jsonSafe(v any) any {
	switch v := v.(type) {
	case nil, bool, int, int8, int16, int32, int64, uint8, uint16, uint32, uint64, []byte:
		return v
	case string:
		return clean(v)
	case float32:
		return jsonSafe(float64(v))
	case float64:
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return fmt.Sprint(v)
		}
		return v
	case time.Time:
		return v.UTC().Format(time.RFC3339)
	case amqp.Decimal:
		return fmt.Sprintf("%de-%d", v.Value, v.Scale)
	case amqp.Table:
		return jsonSafeTable(v)
	case map[string]any:
		return jsonSafeTable(v)
	case []any:
		out := make([]any, len(v))
		for i, e := range v {
			out[i] = jsonSafe(e)
		}
		return out
	}
	return clean(fmt.Sprint(v))
}
