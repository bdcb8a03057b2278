package sender

import (
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	busv1 "notify/proto/gen/notify/bus/v1"
	notifyv1 "notify/proto/gen/notify/v1"
)

// FuzzDecodeSendTask: whatever bytes arrive on notify.send, decoding never panics, and it
// accepts exactly the bodies that are a SendTask naming a notification; everything else is
// an error, which the handler dead-letters as undecodable instead of retrying it.
func FuzzDecodeSendTask(f *testing.F) {
	for _, m := range []*busv1.SendTask{
		{NotificationId: "0192d5c8-6f0e-7cc1-8a55-1c0d2d6c9a10"},
		{NotificationId: "not-a-uuid", EnqueueTime: timestamppb.Now()},
		{NotificationId: "0192d5c8-6f0e-7cc1-8a55-1c0d2d6c9a10", Request: &notifyv1.PublishRequest{Type: "t",
			Recipients: &notifyv1.Recipients{Target: &notifyv1.Recipients_UserIds{UserIds: &notifyv1.UserIDs{UserIds: []string{"u"}}}}},
			Generation: 2},
		{},
	} {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("{\"notification_id\": \"json, not protobuf\"}"))
	f.Add([]byte{0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, body []byte) {
		id, guess, err := decodeSendTask(body)
		var task busv1.SendTask
		valid := proto.Unmarshal(body, &task) == nil && task.GetNotificationId() != ""
		if valid != (err == nil) {
			t.Fatalf("decodeSendTask = %q, %v; want an error exactly when the body is no SendTask with an id", id, err)
		}
		if err == nil && id != task.GetNotificationId() {
			t.Fatalf("decodeSendTask = %q, want %q", id, task.GetNotificationId())
		}
		if err == nil && (guess != nil) != (task.GetRequest() != nil) {
			t.Fatalf("decodeSendTask guessed %v for a task with request %v", guess, task.GetRequest())
		}
		if guess != nil && (guess.ID != id || guess.Generation() != int(task.GetGeneration())) {
			t.Fatalf("guess %+v of task %v", guess, &task)
		}
	})
}
