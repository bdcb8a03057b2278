package fcm

import (
	"crypto/sha256"
	"encoding/base64"
	"strconv"
	"time"

	"firebase.google.com/go/v4/messaging"
)

// Priority is how urgently a message should reach the device.
type Priority int

const (
	// PriorityNormal lets the platform batch delivery to save battery (the zero value).
	PriorityNormal Priority = iota
	// PriorityHigh asks for immediate delivery, waking the device.
	PriorityHigh
)

// Message is one notification as notify sends it to every platform.
//
// Data is shared, not copied, by every request built from the Message: do not modify it
// while a send is in flight.
type Message struct {
	Title, Body string
	// ImageURL, when set, is shown on Android, iOS (through the app's notification service
	// extension) and the web.
	ImageURL string
	Data     map[string]string
	Priority Priority
	// TTL is how long FCM and the platforms keep trying from the moment of sending; a
	// retry passes what is left of the notification's TTL. 0 means FCM's default (4 weeks).
	TTL time.Duration
	// CollapseKey makes a newer message replace an undelivered older one with the same key.
	CollapseKey string

	Android AndroidOptions
	APNS    APNSOptions
	Webpush WebpushOptions
}

// AndroidOptions are the android.notification fields of a visible notification.
type AndroidOptions struct {
	ChannelID, Sound, Tag, ClickAction string
	// NotificationCount is the launcher badge count; nil leaves it alone.
	NotificationCount *int
	// Visibility is "PRIVATE", "PUBLIC", "SECRET" or "" (Android's default).
	Visibility string
}

// APNSOptions are fields of the aps dictionary.
type APNSOptions struct {
	Sound, ThreadID, Category string
	// Badge is the app icon's badge; 0 removes it, nil leaves it alone.
	Badge *int
	// ContentAvailable wakes the app in the background as well; a data-only message always
	// has it.
	ContentAvailable bool
	// InterruptionLevel is "passive", "active", "time-sensitive", "critical" or "".
	InterruptionLevel string
}

// WebpushOptions are the webpush options.
type WebpushOptions struct {
	// Link is the https page opened when the user clicks the notification.
	Link string
}

// DataOnly reports whether m shows nothing by itself (no title, body or image): the app
// handles it in the background.
func (m Message) DataOnly() bool { return m.Title == "" && m.Body == "" && m.ImageURL == "" }

// Platform header limits.
const (
	maxAPNSCollapseID = 64 // bytes, APNs apns-collapse-id
	maxWebpushTopic   = 32 // characters of the URL-safe base64 alphabet, RFC 8030 §5.4
)

// multicast builds the SDK request for m and tokens, once per chunk: the SDK shares every
// part of it between the per-token requests. now anchors apns-expiration.
func (m Message) multicast(tokens []string, now time.Time) *messaging.MulticastMessage {
	p := m.platforms(now)
	return &messaging.MulticastMessage{
		// Tokens is deprecated in favour of Fids, but ours are registration tokens, not
		// Firebase installation IDs: sent as "fid" they would be refused.
		Tokens:       tokens, //nolint:staticcheck // SA1019, see above
		Data:         m.Data,
		Notification: p.notification,
		Android:      p.android,
		APNS:         p.apns,
		Webpush:      p.webpush,
	}
}

// single builds the SDK message for m without a target; the caller sets its topic or
// condition.
func (m Message) single(now time.Time) *messaging.Message {
	p := m.platforms(now)
	return &messaging.Message{Data: m.Data, Notification: p.notification, Android: p.android, APNS: p.apns, Webpush: p.webpush}
}

// platformParts are the parts of an FCM message every target kind shares.
type platformParts struct {
	notification *messaging.Notification
	android      *messaging.AndroidConfig
	apns         *messaging.APNSConfig
	webpush      *messaging.WebpushConfig
}

// platforms tells each platform the same thing in its own terms:
//
//	             Android          APNs                      Webpush
//	priority     priority         apns-priority 10 / 5      Urgency high / normal
//	TTL          ttl              apns-expiration (unix s)  TTL (seconds)
//	collapse     collapse_key     apns-collapse-id          Topic
//	image        notification     fcm_options.image +
//	             .image           aps mutable-content
//	options      notification.*   aps sound, badge, …       fcm_options.link
//
// A data-only message (DataOnly) goes to Apple devices as a background notification, as
// APNs and FCM require: aps content-available 1, apns-push-type background and
// apns-priority 5 whatever the priority (FCM refuses high-priority data messages to Apple
// devices). A visible one is apns-push-type alert.
func (m Message) platforms(now time.Time) platformParts {
	android := &messaging.AndroidConfig{CollapseKey: m.CollapseKey, Priority: "normal"}
	apnsHeaders := map[string]string{"apns-priority": "5"}
	webHeaders := map[string]string{"Urgency": "normal"}
	if m.Priority == PriorityHigh {
		android.Priority = "high"
		apnsHeaders["apns-priority"] = "10"
		webHeaders["Urgency"] = "high"
	}
	if m.TTL != 0 {
		ttl := m.TTL
		android.TTL = &ttl
		// Whole seconds, rounded up: a sub-second TTL must not read as "0", which both
		// APNs and Web Push take as "deliver now or never".
		secs := int64((m.TTL + time.Second - 1) / time.Second)
		apnsHeaders["apns-expiration"] = strconv.FormatInt(now.Unix()+secs, 10)
		webHeaders["TTL"] = strconv.FormatInt(secs, 10)
	}
	if m.CollapseKey != "" {
		apnsHeaders["apns-collapse-id"] = fitKey(m.CollapseKey, maxAPNSCollapseID, false)
		webHeaders["Topic"] = fitKey(m.CollapseKey, maxWebpushTopic, true)
	}
	p := platformParts{
		android: android,
		apns:    &messaging.APNSConfig{Headers: apnsHeaders},
		webpush: &messaging.WebpushConfig{Headers: webHeaders},
	}
	if m.DataOnly() {
		apnsHeaders["apns-priority"] = "5"
		apnsHeaders["apns-push-type"] = "background"
		p.apns.Payload = &messaging.APNSPayload{Aps: &messaging.Aps{ContentAvailable: true}}
		return p
	}
	p.notification = &messaging.Notification{Title: m.Title, Body: m.Body, ImageURL: m.ImageURL}
	if an := m.androidNotification(); an != nil {
		android.Notification = an
	}
	apnsHeaders["apns-push-type"] = "alert"
	if aps := m.aps(); aps != nil {
		p.apns.Payload = &messaging.APNSPayload{Aps: aps}
	}
	if m.ImageURL != "" {
		p.apns.FCMOptions = &messaging.APNSFCMOptions{ImageURL: m.ImageURL}
	}
	if m.Webpush.Link != "" {
		p.webpush.FCMOptions = &messaging.WebpushFCMOptions{Link: m.Webpush.Link}
	}
	return p
}

// androidNotification is the android.notification block of a visible message, nil when it
// would be empty.
func (m Message) androidNotification() *messaging.AndroidNotification {
	o := m.Android
	if m.ImageURL == "" && o == (AndroidOptions{}) {
		return nil
	}
	n := &messaging.AndroidNotification{
		ImageURL:          m.ImageURL,
		ChannelID:         o.ChannelID,
		Sound:             o.Sound,
		Tag:               o.Tag,
		ClickAction:       o.ClickAction,
		NotificationCount: o.NotificationCount,
	}
	switch o.Visibility {
	case "PRIVATE":
		n.Visibility = messaging.VisibilityPrivate
	case "PUBLIC":
		n.Visibility = messaging.VisibilityPublic
	case "SECRET":
		n.Visibility = messaging.VisibilitySecret
	}
	return n
}

// aps is the aps dictionary of a visible message, nil when it would be empty.
func (m Message) aps() *messaging.Aps {
	o := m.APNS
	if m.ImageURL == "" && o == (APNSOptions{}) {
		return nil
	}
	aps := &messaging.Aps{
		// iOS only hands the image to the app's notification service extension when the
		// notification is mutable.
		MutableContent:   m.ImageURL != "",
		ContentAvailable: o.ContentAvailable,
		Badge:            o.Badge,
		Sound:            o.Sound,
		ThreadID:         o.ThreadID,
		Category:         o.Category,
	}
	if o.InterruptionLevel != "" {
		// The SDK has no field for it; custom aps keys are merged into the dictionary.
		aps.CustomData = map[string]any{"interruption-level": o.InterruptionLevel}
	}
	if o.InterruptionLevel == "critical" && o.Sound != "" {
		// A critical alert's sound is a dictionary with critical: 1, or it plays as an
		// ordinary one (muted by the switch).
		aps.Sound = ""
		aps.CriticalSound = &messaging.CriticalSound{Critical: true, Name: o.Sound, Volume: 1}
	}
	return aps
}

// fitKey returns key if it fits a header of at most limit bytes (and, for a Web Push Topic,
// uses only the URL-safe base64 alphabet); otherwise a digest of it, so that equal keys still
// collapse together.
func fitKey(key string, limit int, topic bool) string {
	if len(key) <= limit && (!topic || urlSafe(key)) {
		return key
	}
	sum := sha256.Sum256([]byte(key))
	return base64.RawURLEncoding.EncodeToString(sum[:])[:min(limit, 43)]
}

func urlSafe(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}
