package retrier

import (
	"testing"

	"google.golang.org/protobuf/proto"

	busv1 "notify/proto/gen/notify/bus/v1"
)

// FuzzDecodeRetryTask: whatever bytes arrive on notify.retry, decoding never panics and
// never returns a nil task, and it accepts exactly the bodies that are a RetryTask naming a
// notification and at least one token; everything else is an error, which the handler
// dead-letters as undecodable instead of retrying it.
func FuzzDecodeRetryTask(f *testing.F) {
	for _, m := range []*busv1.RetryTask{
		{NotificationId: "0192d5c8-6f0e-7cc1-8a55-1c0d2d6c9a10", Tokens: []string{"tok-1", "tok-2"}, Attempt: 3},
		{NotificationId: "0192d5c8-6f0e-7cc1-8a55-1c0d2d6c9a10"},
		{Tokens: []string{"tok-1"}},
	} {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("not protobuf at all"))
	f.Add([]byte{0x12, 0x02, 0xff, 0xfe})
	f.Fuzz(func(t *testing.T, body []byte) {
		task, err := decodeRetryTask(body)
		if task == nil {
			t.Fatal("decodeRetryTask returned a nil task")
		}
		var want busv1.RetryTask
		valid := proto.Unmarshal(body, &want) == nil && want.GetNotificationId() != "" && len(want.GetTokens()) > 0
		if valid != (err == nil) {
			t.Fatalf("decodeRetryTask = %v, %v; want an error exactly when the body is no RetryTask with an id and tokens", task, err)
		}
		if err == nil && !proto.Equal(task, &want) {
			t.Fatalf("decodeRetryTask = %v, want %v", task, &want)
		}
	})
}
