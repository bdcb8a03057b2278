// Package sendpack puts several send tasks into one broker message
// (notify.bus.v1.SendTaskPack) and takes them out again: the outbox relay packs the send
// tasks of a round, the sender unpacks them.
//
// The broker works per message: a quorum queue's log entry, the publisher's confirm, the
// delivery and its settlement. A pack pays that once for all its tasks (make bench's
// sustain phase: RabbitMQ's CPU per small notification about 30% lower). Packs go to a
// queue of their own (rabbit.PackedSendKey), so that a sender that reads no packs never
// receives one.
package sendpack

import (
	"errors"
	"fmt"
	"hash/fnv"
	"strings"

	"google.golang.org/protobuf/proto"

	"notify/pkg/rabbit"
	busv1 "notify/proto/gen/notify/bus/v1"
)

var (
	// Type is the AMQP type of a pack.
	Type = string((&busv1.SendTaskPack{}).ProtoReflect().Descriptor().FullName())
	// TaskType is the AMQP type of a send task on its own.
	TaskType = string((&busv1.SendTask{}).ProtoReflect().Descriptor().FullName())
)

// Packable reports whether m is a send task that may travel in a pack.
func Packable(m rabbit.Message) bool {
	return m.RoutingKey == rabbit.SendKey && m.Type == TaskType
}

// ID is the message id of a pack of tasks: "outbox-pack-<first task's row id>-<tasks>-<hash
// of every task's message id>". It names the pack by its members, as a row's message id
// names the row: the same tasks republished (a relay that crashed before its commit) make
// the same id, and a pack of other tasks, even from the same first row, another.
func ID(tasks []rabbit.Message) string {
	h := fnv.New32a()
	for _, m := range tasks {
		h.Write([]byte(m.MessageID))
		h.Write([]byte{0})
	}
	first := ""
	if len(tasks) > 0 {
		first = strings.TrimPrefix(tasks[0].MessageID, "outbox-")
	}
	return fmt.Sprintf("outbox-pack-%s-%d-%08x", first, len(tasks), h.Sum32())
}

// Pack returns one message to the packed send queue carrying tasks (each Packable, with
// its own message id and trace headers), under message id id.
func Pack(id string, tasks []rabbit.Message) (rabbit.Message, error) {
	pack := &busv1.SendTaskPack{Tasks: make([]*busv1.PackedSendTask, len(tasks))}
	for i, m := range tasks {
		if !Packable(m) {
			return rabbit.Message{}, fmt.Errorf("pack %s: message %s is a %q to %q, not a send task", id, m.MessageID, m.Type, m.RoutingKey)
		}
		t := &busv1.PackedSendTask{Task: m.Body, MessageId: m.MessageID}
		for k, v := range m.Headers {
			s, ok := v.(string)
			if !ok {
				return rabbit.Message{}, fmt.Errorf("pack %s: header %s of message %s is a %T; a pack carries only strings", id, k, m.MessageID, v)
			}
			if t.Headers == nil {
				t.Headers = map[string]string{}
			}
			t.Headers[k] = s
		}
		pack.Tasks[i] = t
	}
	body, err := proto.Marshal(pack)
	if err != nil {
		return rabbit.Message{}, fmt.Errorf("pack %s: %w", id, err)
	}
	return rabbit.Message{
		RoutingKey: rabbit.PackedSendKey, MessageID: id, Type: Type, ContentType: "application/protobuf", Body: body,
	}, nil
}

// Unpack returns the send tasks a pack delivery carries, each as it would have arrived on
// its own (its message id, type, headers and body; the pack's queue, timestamps and
// redelivery flag; none of the pack's headers). Settling them is the pack's business: the
// returned deliveries belong to no channel.
func Unpack(d *rabbit.Delivery) ([]*rabbit.Delivery, error) {
	if d.Type != Type {
		return nil, fmt.Errorf("message %s is a %q, not a %s", d.MessageID, d.Type, Type)
	}
	var pack busv1.SendTaskPack
	if err := proto.Unmarshal(d.Body, &pack); err != nil {
		return nil, fmt.Errorf("message %s: %w", d.MessageID, err)
	}
	if len(pack.GetTasks()) == 0 {
		return nil, errors.New("message " + d.MessageID + ": a pack with no task")
	}
	out := make([]*rabbit.Delivery, len(pack.GetTasks()))
	for i, t := range pack.GetTasks() {
		headers := make(map[string]any, len(t.GetHeaders()))
		for k, v := range t.GetHeaders() {
			headers[k] = v
		}
		out[i] = &rabbit.Delivery{
			Queue: d.Queue, RoutingKey: rabbit.SendKey, MessageID: t.GetMessageId(), Type: TaskType,
			ContentType: d.ContentType, Headers: headers, Body: t.GetTask(),
			Timestamp: d.Timestamp, Redelivered: d.Redelivered, Received: d.Received,
		}
	}
	return out, nil
}

// Single returns the message that sends an unpacked task on its own, to the send queue:
// its message id, headers and body as the pack carried them.
func Single(d *rabbit.Delivery) rabbit.Message {
	return rabbit.Message{
		RoutingKey: rabbit.SendKey, MessageID: d.MessageID, Type: TaskType, ContentType: "application/protobuf",
		Headers: d.Headers, Body: d.Body, Timestamp: d.Timestamp,
	}
}
