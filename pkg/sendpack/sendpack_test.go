package sendpack

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"notify/pkg/rabbit"
	busv1 "notify/proto/gen/notify/bus/v1"
)

func task(id string, headers map[string]any) rabbit.Message {
	body, _ := proto.Marshal(&busv1.SendTask{NotificationId: id})
	return rabbit.Message{RoutingKey: rabbit.SendKey, MessageID: "outbox-" + id, Type: TaskType, Body: body, Headers: headers}
}

// TestPackRoundTrip: what Pack puts in comes out of Unpack task by task, and Single sends
// each on its own as the relay would have.
func TestPackRoundTrip(t *testing.T) {
	t.Parallel()
	in := []rabbit.Message{task("1", map[string]any{"traceparent": "00-a-b-01", "tracestate": "x=y"}), task("2", nil)}
	m, err := Pack("outbox-pack-1", in)
	if err != nil {
		t.Fatal(err)
	}
	if m.RoutingKey != rabbit.PackedSendKey || m.Type != Type || m.MessageID != "outbox-pack-1" {
		t.Fatalf("pack = %q %q %q", m.RoutingKey, m.Type, m.MessageID)
	}
	at := time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)
	out, err := Unpack(&rabbit.Delivery{Queue: "notify.send.packed", MessageID: m.MessageID, Type: m.Type, Body: m.Body,
		Redelivered: true, Received: at, Headers: map[string]any{"x-delivery-count": int64(1)}})
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != 2 {
		t.Fatalf("unpacked %d tasks, want 2", len(out))
	}
	for i, d := range out {
		if d.MessageID != in[i].MessageID || string(d.Body) != string(in[i].Body) || d.Type != TaskType ||
			!d.Redelivered || !d.Received.Equal(at) || d.Queue != "notify.send.packed" {
			t.Errorf("task %d = %+v, want %s as it went in, with the pack's queue and times", i, d, in[i].MessageID)
		}
		if _, ok := d.Headers["x-delivery-count"]; ok {
			t.Errorf("task %d carries the pack's headers: %v", i, d.Headers)
		}
		s := Single(d)
		if s.RoutingKey != rabbit.SendKey || s.MessageID != in[i].MessageID || s.Type != TaskType || string(s.Body) != string(in[i].Body) {
			t.Errorf("Single(task %d) = %+v", i, s)
		}
	}
	if out[0].Headers["traceparent"] != "00-a-b-01" || out[0].Headers["tracestate"] != "x=y" || len(out[1].Headers) != 0 {
		t.Errorf("headers = %v, %v; want each task's own", out[0].Headers, out[1].Headers)
	}
}

// TestIDNamesTheMembers: the same tasks make the same id; other tasks from the same first
// row, another.
func TestIDNamesTheMembers(t *testing.T) {
	t.Parallel()
	a := []rabbit.Message{task("7", nil), task("8", nil), task("9", nil)}
	b := []rabbit.Message{task("7", nil), task("9", nil), task("8", nil)}
	if ID(a) != ID(a[:3:3]) || !strings.HasPrefix(ID(a), "outbox-pack-7-3-") {
		t.Errorf("ID = %q, want a stable outbox-pack-7-3-…", ID(a))
	}
	if ID(a) == ID(b) || ID(a) == ID(a[:2]) {
		t.Errorf("ID(%q) = ID of other members", ID(a))
	}
}

func TestPackRefuses(t *testing.T) {
	t.Parallel()
	retry := task("1", nil)
	retry.RoutingKey = rabbit.RetryKey
	for name, msgs := range map[string][]rabbit.Message{
		"a task to another queue": {task("0", nil), retry},
		"a header not a string":   {task("0", map[string]any{"x-notify-attempt": int64(2)})},
	} {
		if _, err := Pack("p", msgs); err == nil || !strings.Contains(err.Error(), "outbox-") {
			t.Errorf("%s: Pack = %v, want an error naming the message", name, err)
		}
	}
}

func TestUnpackRefuses(t *testing.T) {
	t.Parallel()
	empty, _ := proto.Marshal(&busv1.SendTaskPack{})
	for name, d := range map[string]*rabbit.Delivery{
		"another type": {MessageID: "m", Type: TaskType, Body: empty},
		"not protobuf": {MessageID: "m", Type: Type, Body: []byte("\xff\xff")},
		"no task":      {MessageID: "m", Type: Type, Body: empty},
	} {
		if _, err := Unpack(d); err == nil {
			t.Errorf("%s: Unpack accepted it", name)
		}
	}
}

// FuzzUnpack: whatever arrives on the packed queue, Unpack never panics, and what it
// accepts has a task for each packed one, whose Single is a send task to the send queue.
func FuzzUnpack(f *testing.F) {
	m, err := Pack("p", []rabbit.Message{task("1", map[string]any{"traceparent": "00-a-b-01"}), task("2", nil)})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(m.Body)
	f.Add([]byte{})
	f.Add([]byte("\x0a\x00"))
	f.Fuzz(func(t *testing.T, body []byte) {
		tasks, err := Unpack(&rabbit.Delivery{MessageID: "m", Type: Type, Body: body})
		if err != nil {
			return
		}
		var pack busv1.SendTaskPack
		if err := proto.Unmarshal(body, &pack); err != nil || len(tasks) != len(pack.GetTasks()) || len(tasks) == 0 {
			t.Fatalf("Unpack gave %d tasks of a body that decodes to %d (%v)", len(tasks), len(pack.GetTasks()), err)
		}
		for _, d := range tasks {
			if s := Single(d); s.RoutingKey != rabbit.SendKey || s.Type != TaskType {
				t.Fatalf("Single = %q to %q", s.Type, s.RoutingKey)
			}
		}
	})
}
