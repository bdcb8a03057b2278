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
}

// Platform header limits.
const (
	maxAPNSCollapseID = 64 // bytes, APNs apns-collapse-id
	maxWebpushTopic   = 32 // characters of the URL-safe base64 alphabet, RFC 8030 §5.4
)

// multicast builds the SDK request for m and tokens, once per chunk: the SDK shares every
// part of it between the per-token requests. now anchors apns-expiration.
//
// Each platform is told the same thing in its own terms:
//
//	             Android          APNs                      Webpush
//	priority     priority         apns-priority 10 / 5      Urgency high / normal
//	TTL          ttl              apns-expiration (unix s)  TTL (seconds)
//	collapse     collapse_key     apns-collapse-id          Topic
//	image        notification     fcm_options.image +
//	             .image           aps mutable-content
func (m Message) multicast(tokens []string, now time.Time) *messaging.MulticastMessage {
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

	mm := &messaging.MulticastMessage{
		// Tokens is deprecated in favour of Fids, but ours are registration tokens, not
		// Firebase installation IDs: sent as "fid" they would be refused.
		Tokens:  tokens, //nolint:staticcheck // SA1019, see above
		Data:    m.Data,
		Android: android,
		APNS:    &messaging.APNSConfig{Headers: apnsHeaders},
		Webpush: &messaging.WebpushConfig{Headers: webHeaders},
	}
	if m.Title != "" || m.Body != "" || m.ImageURL != "" {
		mm.Notification = &messaging.Notification{Title: m.Title, Body: m.Body, ImageURL: m.ImageURL}
	}
	if m.ImageURL != "" {
		android.Notification = &messaging.AndroidNotification{ImageURL: m.ImageURL}
		mm.APNS.FCMOptions = &messaging.APNSFCMOptions{ImageURL: m.ImageURL}
		// iOS only hands the image to the app's notification service extension when the
		// notification is mutable.
		mm.APNS.Payload = &messaging.APNSPayload{Aps: &messaging.Aps{MutableContent: true}}
	}
	return mm
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
