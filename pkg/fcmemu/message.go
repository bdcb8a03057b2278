package fcmemu

import (
	"encoding/json"
	"fmt"
	"net/url"
	"strconv"
	"strings"

	"notify/pkg/fcm/topic"
)

// MaxPayload is FCM's payload limit in bytes; see payloadSize for what counts.
const MaxPayload = 4096

// maxTTLSeconds is FCM's longest time to live: 28 days.
const maxTTLSeconds = 28 * 24 * 60 * 60

// sendRequest is the body of POST /v1/projects/{project}/messages:send.
type sendRequest struct {
	ValidateOnly bool     `json:"validate_only"`
	Message      *Message `json:"message"`
}

// Message is the part of an FCM v1 message the emulator decodes, with the field names of the
// JSON the Go SDK sends. Fields it does not model are still in Received.Body.
type Message struct {
	Token        string            `json:"token,omitempty"`
	Topic        string            `json:"topic,omitempty"`
	Condition    string            `json:"condition,omitempty"`
	FID          string            `json:"fid,omitempty"`
	Notification *Notification     `json:"notification,omitempty"`
	Data         map[string]string `json:"data,omitempty"`
	Android      *AndroidConfig    `json:"android,omitempty"`
	APNS         *APNSConfig       `json:"apns,omitempty"`
	Webpush      *WebpushConfig    `json:"webpush,omitempty"`
	FCMOptions   *FCMOptions       `json:"fcm_options,omitempty"`
}

// Notification is the cross-platform notification.
type Notification struct {
	Title string `json:"title,omitempty"`
	Body  string `json:"body,omitempty"`
	Image string `json:"image,omitempty"`
}

// AndroidConfig holds the Android options; TTL is in FCM's wire form ("3600s", "1.5s").
type AndroidConfig struct {
	CollapseKey           string               `json:"collapse_key,omitempty"`
	Priority              string               `json:"priority,omitempty"`
	TTL                   string               `json:"ttl,omitempty"`
	RestrictedPackageName string               `json:"restricted_package_name,omitempty"`
	Data                  map[string]string    `json:"data,omitempty"`
	Notification          *AndroidNotification `json:"notification,omitempty"`
	DirectBootOK          bool                 `json:"direct_boot_ok,omitempty"`
}

// AndroidNotification holds the commonly used Android notification fields.
type AndroidNotification struct {
	Title       string `json:"title,omitempty"`
	Body        string `json:"body,omitempty"`
	Icon        string `json:"icon,omitempty"`
	Color       string `json:"color,omitempty"`
	Sound       string `json:"sound,omitempty"`
	Tag         string `json:"tag,omitempty"`
	ClickAction string `json:"click_action,omitempty"`
	ChannelID   string `json:"channel_id,omitempty"`
	Image       string `json:"image,omitempty"`
	// NotificationCount is the launcher badge count, nil when absent.
	NotificationCount *int `json:"notification_count,omitempty"`
	// Visibility is PRIVATE, PUBLIC or SECRET.
	Visibility string `json:"visibility,omitempty"`
}

// APNSConfig holds the APNs headers and the raw APNs payload.
type APNSConfig struct {
	Headers    map[string]string `json:"headers,omitempty"`
	Payload    json.RawMessage   `json:"payload,omitempty"`
	FCMOptions *APNSFCMOptions   `json:"fcm_options,omitempty"`
}

// APNSFCMOptions holds the FCM options for Apple devices.
type APNSFCMOptions struct {
	Image string `json:"image,omitempty"`
}

// WebpushConfig holds the Web Push headers and data.
type WebpushConfig struct {
	Headers    map[string]string  `json:"headers,omitempty"`
	Data       map[string]string  `json:"data,omitempty"`
	FCMOptions *WebpushFCMOptions `json:"fcm_options,omitempty"`
}

// WebpushFCMOptions holds the FCM options for web push.
type WebpushFCMOptions struct {
	Link string `json:"link,omitempty"`
}

// FCMOptions holds the platform-independent FCM options.
type FCMOptions struct {
	AnalyticsLabel string `json:"analytics_label,omitempty"`
}

// target is the key the emulator tracks a message under: the token (or FID) itself, so that
// failure injection by prefix works on it, or "/topics/<name>" / "condition:<expr>".
// n counts the targets set; FCM wants exactly one.
func (m *Message) target() (key string, n int) {
	if m.Token != "" {
		key, n = m.Token, n+1
	}
	if m.FID != "" {
		key, n = m.FID, n+1
	}
	if m.Topic != "" {
		key, n = "/topics/"+strings.TrimPrefix(m.Topic, "/topics/"), n+1
	}
	if m.Condition != "" {
		key, n = "condition:"+m.Condition, n+1
	}
	return key, n
}

// violation is a request FCM would reject with INVALID_ARGUMENT.
type violation struct {
	field   string
	message string
}

// validate checks what FCM checks and the SDK does not (or not always). It returns nil for a
// valid message.
func validate(m *Message) *violation {
	if m == nil {
		return &violation{"message", "Recipient of the message is not set."}
	}
	switch _, n := m.target(); {
	case n == 0:
		return &violation{"message", "Recipient of the message is not set."}
	case n > 1:
		return &violation{"message", "Exactly one of token, fid, topic or condition must be set."}
	}
	if m.Topic != "" && !topic.ValidName(strings.TrimPrefix(m.Topic, "/topics/")) {
		return &violation{"message.topic", fmt.Sprintf("Invalid topic name: %q.", m.Topic)}
	}
	if m.Condition != "" {
		if _, err := topic.ParseCondition(m.Condition); err != nil {
			return &violation{"message.condition", fmt.Sprintf("Invalid condition %q: %v.", m.Condition, err)}
		}
	}
	if v := checkDataKeys("message.data", m.Data); v != nil {
		return v
	}
	if size := payloadSize(m); size > MaxPayload {
		return &violation{"message", fmt.Sprintf("Message is too big: the payload is %d bytes, the limit is %d.", size, MaxPayload)}
	}
	if a := m.Android; a != nil {
		if v := checkDataKeys("message.android.data", a.Data); v != nil {
			return v
		}
		switch strings.ToLower(a.Priority) {
		case "", "normal", "high":
		default:
			return &violation{"message.android.priority", fmt.Sprintf("Invalid value at 'message.android.priority': %q", a.Priority)}
		}
		if a.TTL != "" {
			secs, ok := parseTTL(a.TTL)
			if !ok {
				return &violation{"message.android.ttl", fmt.Sprintf("Invalid value at 'message.android.ttl': %q", a.TTL)}
			}
			if secs > maxTTLSeconds {
				return &violation{"message.android.ttl", fmt.Sprintf("TTL %s exceeds the maximum of %ds (28 days).", a.TTL, maxTTLSeconds)}
			}
		}
	}
	if n := m.Android.notification(); n != nil {
		if n.NotificationCount != nil && *n.NotificationCount < 0 {
			return &violation{"message.android.notification.notification_count",
				fmt.Sprintf("Invalid value at 'message.android.notification.notification_count': %d", *n.NotificationCount)}
		}
		switch n.Visibility {
		case "", "VISIBILITY_UNSPECIFIED", "PRIVATE", "PUBLIC", "SECRET":
		default:
			return &violation{"message.android.notification.visibility",
				fmt.Sprintf("Invalid value at 'message.android.notification.visibility': %q", n.Visibility)}
		}
	}
	if w := m.Webpush; w != nil {
		if v := checkDataKeys("message.webpush.data", w.Data); v != nil {
			return v
		}
		if w.FCMOptions != nil && w.FCMOptions.Link != "" {
			if u, err := url.Parse(w.FCMOptions.Link); err != nil || u.Scheme != "https" || u.Host == "" {
				return &violation{"message.webpush.fcm_options.link", "The link must be an absolute HTTPS URL."}
			}
		}
	}
	if a := m.APNS; a != nil && a.Headers["apns-priority"] == "10" && m.Notification == nil && !hasAlert(a.Payload) {
		return &violation{"message.apns.headers", "Data messages to Apple devices must be sent with apns-priority 5."}
	}
	return nil
}

func (a *AndroidConfig) notification() *AndroidNotification {
	if a == nil {
		return nil
	}
	return a.Notification
}

// hasAlert reports whether an APNs payload shows an alert (aps.alert is set): without one,
// and without a message.notification, the message is a data message to Apple devices.
func hasAlert(payload json.RawMessage) bool {
	var p struct {
		Aps struct {
			Alert json.RawMessage `json:"alert"`
		} `json:"aps"`
	}
	if len(payload) == 0 || json.Unmarshal(payload, &p) != nil {
		return false
	}
	return len(p.Aps.Alert) > 0 && string(p.Aps.Alert) != "null"
}

// payloadSize is what the emulator holds against MaxPayload: the bytes of every key and value
// of message.data plus the notification's title, body and image. Platform overrides are not
// counted.
func payloadSize(m *Message) int {
	n := 0
	for k, v := range m.Data {
		n += len(k) + len(v)
	}
	if m.Notification != nil {
		n += len(m.Notification.Title) + len(m.Notification.Body) + len(m.Notification.Image)
	}
	return n
}

// reservedKey reports whether FCM refuses key in a data payload.
func reservedKey(key string) bool {
	return key == "from" || key == "message_type" ||
		strings.HasPrefix(key, "google.") || strings.HasPrefix(key, "gcm.")
}

func checkDataKeys(field string, data map[string]string) *violation {
	for k := range data {
		if reservedKey(k) {
			return &violation{field, fmt.Sprintf("Invalid data payload key: %q is reserved.", k)}
		}
	}
	return nil
}

// parseTTL parses FCM's duration form, whole seconds with up to nine decimals and an "s"
// ("3600s", "1.500000000s"), returning the whole seconds.
func parseTTL(s string) (int64, bool) {
	num, ok := strings.CutSuffix(s, "s")
	if !ok {
		return 0, false
	}
	whole, frac, hasFrac := strings.Cut(num, ".")
	if hasFrac && (len(frac) == 0 || len(frac) > 9 || !digits(frac)) {
		return 0, false
	}
	if !digits(whole) {
		return 0, false
	}
	secs, err := strconv.ParseInt(whole, 10, 64)
	return secs, err == nil
}

func digits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}
