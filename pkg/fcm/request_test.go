package fcm

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"

	notifyv1 "notify/proto/gen/notify/v1"
)

func TestFromRequest(t *testing.T) {
	t.Parallel()
	data := map[string]string{"k": "v"}
	tests := []struct {
		name string
		req  *notifyv1.PublishRequest
		want Message
	}{
		{"data only", &notifyv1.PublishRequest{Data: data}, Message{Data: data}},
		{
			name: "every option",
			req: &notifyv1.PublishRequest{
				Content: &notifyv1.Content{Title: "t", Body: "b", ImageUrl: "https://i.example/x.png"},
				Data:    data,
				Options: &notifyv1.Options{
					Priority: notifyv1.Priority_PRIORITY_HIGH, CollapseKey: "c",
					Android: &notifyv1.AndroidOptions{ChannelId: "ch", Sound: "s", Tag: "tg", ClickAction: "OPEN",
						NotificationCount: proto.Int32(0), Visibility: notifyv1.AndroidVisibility_ANDROID_VISIBILITY_PRIVATE},
					Apns: &notifyv1.ApnsOptions{Sound: "default", Badge: proto.Int32(2), ThreadId: "th", Category: "cat",
						ContentAvailable: true, InterruptionLevel: notifyv1.InterruptionLevel_INTERRUPTION_LEVEL_TIME_SENSITIVE},
					Webpush: &notifyv1.WebpushOptions{Link: "https://example.com/"},
				},
			},
			want: Message{
				Title: "t", Body: "b", ImageURL: "https://i.example/x.png", Data: data, Priority: PriorityHigh, CollapseKey: "c",
				Android: AndroidOptions{ChannelID: "ch", Sound: "s", Tag: "tg", ClickAction: "OPEN",
					NotificationCount: ptr(0), Visibility: "PRIVATE"},
				APNS: APNSOptions{Sound: "default", Badge: ptr(2), ThreadID: "th", Category: "cat",
					ContentAvailable: true, InterruptionLevel: "time-sensitive"},
				Webpush: WebpushOptions{Link: "https://example.com/"},
			},
		},
		{
			name: "unset counts stay nil",
			req: &notifyv1.PublishRequest{Content: &notifyv1.Content{Body: "b"}, Options: &notifyv1.Options{
				Android: &notifyv1.AndroidOptions{Tag: "x"}, Apns: &notifyv1.ApnsOptions{
					InterruptionLevel: notifyv1.InterruptionLevel_INTERRUPTION_LEVEL_CRITICAL}}},
			want: Message{Body: "b", Android: AndroidOptions{Tag: "x"}, APNS: APNSOptions{InterruptionLevel: "critical"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if diff := cmp.Diff(tt.want, FromRequest(tt.req)); diff != "" {
				t.Errorf("FromRequest (-want +got):\n%s", diff)
			}
		})
	}
}
