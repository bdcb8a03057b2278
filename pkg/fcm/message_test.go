package fcm

import (
	"strings"
	"testing"
	"time"

	"firebase.google.com/go/v4/messaging"
	"github.com/google/go-cmp/cmp"
)

func ptr[T any](v T) *T { return &v }

func TestMulticast(t *testing.T) {
	t.Parallel()
	now := time.Unix(1_700_000_000, 0)
	toks := []string{"a", "b"}
	data := map[string]string{"order_id": "42"}
	longKey := strings.Repeat("k", 70)

	tests := []struct {
		name string
		m    Message
		want *messaging.MulticastMessage
	}{
		{
			name: "data only, defaults",
			m:    Message{Data: data},
			want: &messaging.MulticastMessage{
				Tokens:  toks,
				Data:    data,
				Android: &messaging.AndroidConfig{Priority: "normal"},
				APNS: &messaging.APNSConfig{
					Headers: map[string]string{"apns-priority": "5", "apns-push-type": "background"},
					Payload: &messaging.APNSPayload{Aps: &messaging.Aps{ContentAvailable: true}},
				},
				Webpush: &messaging.WebpushConfig{Headers: map[string]string{"Urgency": "normal"}},
			},
		},
		{
			// FCM refuses high-priority data messages to Apple devices: APNs gets 5.
			name: "data only, high priority, TTL",
			m:    Message{Data: data, Priority: PriorityHigh, TTL: time.Minute, APNS: APNSOptions{ContentAvailable: true}},
			want: &messaging.MulticastMessage{
				Tokens:  toks,
				Data:    data,
				Android: &messaging.AndroidConfig{Priority: "high", TTL: ptr(time.Minute)},
				APNS: &messaging.APNSConfig{
					Headers: map[string]string{"apns-priority": "5", "apns-push-type": "background", "apns-expiration": "1700000060"},
					Payload: &messaging.APNSPayload{Aps: &messaging.Aps{ContentAvailable: true}},
				},
				Webpush: &messaging.WebpushConfig{Headers: map[string]string{"Urgency": "high", "TTL": "60"}},
			},
		},
		{
			name: "platform options",
			m: Message{
				Title: "Flight", Body: "Boarding", Priority: PriorityHigh,
				Android: AndroidOptions{ChannelID: "trips", Sound: "chime", Tag: "flight-7", ClickAction: "OPEN_TRIP",
					NotificationCount: ptr(0), Visibility: "SECRET"},
				APNS: APNSOptions{Sound: "default", Badge: ptr(3), ThreadID: "trip-7", Category: "BOARDING",
					ContentAvailable: true, InterruptionLevel: "time-sensitive"},
				Webpush: WebpushOptions{Link: "https://example.com/trips/7"},
			},
			want: &messaging.MulticastMessage{
				Tokens:       toks,
				Notification: &messaging.Notification{Title: "Flight", Body: "Boarding"},
				Android: &messaging.AndroidConfig{Priority: "high", Notification: &messaging.AndroidNotification{
					ChannelID: "trips", Sound: "chime", Tag: "flight-7", ClickAction: "OPEN_TRIP",
					NotificationCount: ptr(0), Visibility: messaging.VisibilitySecret,
				}},
				APNS: &messaging.APNSConfig{
					Headers: map[string]string{"apns-priority": "10", "apns-push-type": "alert"},
					Payload: &messaging.APNSPayload{Aps: &messaging.Aps{
						Sound: "default", Badge: ptr(3), ThreadID: "trip-7", Category: "BOARDING", ContentAvailable: true,
						CustomData: map[string]any{"interruption-level": "time-sensitive"},
					}},
				},
				Webpush: &messaging.WebpushConfig{
					Headers:    map[string]string{"Urgency": "high"},
					FCMOptions: &messaging.WebpushFCMOptions{Link: "https://example.com/trips/7"},
				},
			},
		},
		{
			name: "critical alert plays a critical sound",
			m:    Message{Body: "Smoke", APNS: APNSOptions{Sound: "alarm.caf", InterruptionLevel: "critical"}},
			want: &messaging.MulticastMessage{
				Tokens:       toks,
				Notification: &messaging.Notification{Body: "Smoke"},
				Android:      &messaging.AndroidConfig{Priority: "normal"},
				APNS: &messaging.APNSConfig{
					Headers: map[string]string{"apns-priority": "5", "apns-push-type": "alert"},
					Payload: &messaging.APNSPayload{Aps: &messaging.Aps{
						CriticalSound: &messaging.CriticalSound{Critical: true, Name: "alarm.caf", Volume: 1},
						CustomData:    map[string]any{"interruption-level": "critical"},
					}},
				},
				Webpush: &messaging.WebpushConfig{Headers: map[string]string{"Urgency": "normal"}},
			},
		},
		{
			name: "every field, high priority",
			m: Message{
				Title: "Order shipped", Body: "On its way", ImageURL: "https://img.example/1.png",
				Data: data, Priority: PriorityHigh, TTL: time.Hour, CollapseKey: "order-42",
			},
			want: &messaging.MulticastMessage{
				Tokens: toks,
				Data:   data,
				Notification: &messaging.Notification{
					Title: "Order shipped", Body: "On its way", ImageURL: "https://img.example/1.png",
				},
				Android: &messaging.AndroidConfig{
					CollapseKey:  "order-42",
					Priority:     "high",
					TTL:          ptr(time.Hour),
					Notification: &messaging.AndroidNotification{ImageURL: "https://img.example/1.png"},
				},
				APNS: &messaging.APNSConfig{
					Headers: map[string]string{
						"apns-priority":    "10",
						"apns-expiration":  "1700003600",
						"apns-collapse-id": "order-42",
						"apns-push-type":   "alert",
					},
					Payload:    &messaging.APNSPayload{Aps: &messaging.Aps{MutableContent: true}},
					FCMOptions: &messaging.APNSFCMOptions{ImageURL: "https://img.example/1.png"},
				},
				Webpush: &messaging.WebpushConfig{Headers: map[string]string{
					"Urgency": "high",
					"TTL":     "3600",
					"Topic":   "order-42",
				}},
			},
		},
		{
			name: "title only, normal, sub-second TTL rounds up",
			m:    Message{Title: "Hi", TTL: 1500 * time.Millisecond},
			want: &messaging.MulticastMessage{
				Tokens:       toks,
				Notification: &messaging.Notification{Title: "Hi"},
				Android:      &messaging.AndroidConfig{Priority: "normal", TTL: ptr(1500 * time.Millisecond)},
				APNS: &messaging.APNSConfig{Headers: map[string]string{
					"apns-priority": "5", "apns-expiration": "1700000002", "apns-push-type": "alert",
				}},
				Webpush: &messaging.WebpushConfig{Headers: map[string]string{"Urgency": "normal", "TTL": "2"}},
			},
		},
		{
			name: "collapse key unfit for the headers is digested",
			m:    Message{Body: "b", CollapseKey: "order 42/status"},
			want: &messaging.MulticastMessage{
				Tokens:       toks,
				Notification: &messaging.Notification{Body: "b"},
				Android:      &messaging.AndroidConfig{Priority: "normal", CollapseKey: "order 42/status"},
				APNS: &messaging.APNSConfig{Headers: map[string]string{
					"apns-priority": "5", "apns-collapse-id": "order 42/status", "apns-push-type": "alert",
				}},
				Webpush: &messaging.WebpushConfig{Headers: map[string]string{
					"Urgency": "normal", "Topic": fitKey("order 42/status", maxWebpushTopic, true),
				}},
			},
		},
		{
			name: "collapse key over 64 bytes",
			m:    Message{Body: "b", CollapseKey: longKey},
			want: &messaging.MulticastMessage{
				Tokens:       toks,
				Notification: &messaging.Notification{Body: "b"},
				Android:      &messaging.AndroidConfig{Priority: "normal", CollapseKey: longKey},
				APNS: &messaging.APNSConfig{Headers: map[string]string{
					"apns-priority": "5", "apns-collapse-id": fitKey(longKey, maxAPNSCollapseID, false), "apns-push-type": "alert",
				}},
				Webpush: &messaging.WebpushConfig{Headers: map[string]string{
					"Urgency": "normal", "Topic": fitKey(longKey, maxWebpushTopic, true),
				}},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := tt.m.multicast(toks, now)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("multicast (-want +got):\n%s", diff)
			}
		})
	}
}

func TestFitKey(t *testing.T) {
	t.Parallel()
	tests := []struct {
		key   string
		limit int
		topic bool
		keep  bool // key is used as is
	}{
		{"order-42", maxWebpushTopic, true, true},
		{"order_42-ABC", maxWebpushTopic, true, true},
		{"order:42", maxWebpushTopic, true, false},
		{strings.Repeat("a", 32), maxWebpushTopic, true, true},
		{strings.Repeat("a", 33), maxWebpushTopic, true, false},
		{"order:42 status", maxAPNSCollapseID, false, true},
		{strings.Repeat("a", 64), maxAPNSCollapseID, false, true},
		{strings.Repeat("a", 65), maxAPNSCollapseID, false, false},
	}
	for _, tt := range tests {
		got := fitKey(tt.key, tt.limit, tt.topic)
		if tt.keep {
			if got != tt.key {
				t.Errorf("fitKey(%q, %d, %t) = %q, want the key itself", tt.key, tt.limit, tt.topic, got)
			}
			continue
		}
		if got == tt.key || len(got) > tt.limit || !urlSafe(got) {
			t.Errorf("fitKey(%q, %d, %t) = %q, want a URL-safe digest of at most %d bytes", tt.key, tt.limit, tt.topic, got, tt.limit)
		}
		if again := fitKey(tt.key, tt.limit, tt.topic); again != got {
			t.Errorf("fitKey(%q) is not stable: %q then %q", tt.key, got, again)
		}
	}
	if a, b := fitKey("order:1", maxWebpushTopic, true), fitKey("order:2", maxWebpushTopic, true); a == b {
		t.Errorf("different keys digest alike: %q", a)
	}
}

func TestMulticastSharesParts(t *testing.T) {
	t.Parallel()
	// The SDK copies these pointers into every per-token request: building must not be
	// per token, and must not copy the caller's token slice or data.
	toks := tokens("t", 3)
	data := map[string]string{"k": "v"}
	mm := Message{Title: "x", Data: data}.multicast(toks, time.Now())
	if &mm.Tokens[0] != &toks[0] { //nolint:staticcheck // SA1019, see multicast
		t.Error("tokens were copied")
	}
	mm.Data["k2"] = "v2"
	if data["k2"] != "v2" {
		t.Error("data was copied")
	}
}
