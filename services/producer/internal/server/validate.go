package server

import (
	"encoding/json"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/protobuf/types/known/durationpb"

	"notify/pkg/fcm/topic"
	notifyv1 "notify/proto/gen/notify/v1"
)

// Limits on what Publish and the device RPCs accept.
const (
	MaxRecipients      = 10_000
	MaxUserIDLen       = 128
	MaxDeviceIDLen     = 128
	MaxTokenLen        = 1024
	MaxIdempotencyKey  = 128
	MaxTypeLen         = 64
	MaxCollapseKeyLen  = 64
	MaxFCMPayloadBytes = 4096
	MaxTTL             = 28 * 24 * time.Hour
	MaxScheduleAhead   = 30 * 24 * time.Hour // options.send_at
	MaxBatchDevices    = 10_000
	MaxTopicLen        = 900 // FCM's longest topic name
	MaxConditionLen    = 1024
	MaxOptionLen       = 256  // each string of options.android and options.apns
	MaxLinkLen         = 1024 // options.webpush.link
)

var typePattern = regexp.MustCompile(`^[A-Za-z0-9._-]+$`)

// notAToken refuses a token that would read as a topic or condition key.
const notAToken = `must not start with "/topics/" or "condition:": use recipients.topic or recipients.condition`

// violations collects field violations; the request is refused when there is any.
type violations []*errdetails.BadRequest_FieldViolation

func (v *violations) add(field, format string, args ...any) {
	*v = append(*v, &errdetails.BadRequest_FieldViolation{Field: field, Description: fmt.Sprintf(format, args...)})
}

// required adds a violation when value is empty or longer than maxLen bytes.
func (v *violations) required(field, value string, maxLen int) {
	switch {
	case value == "":
		v.add(field, "is required")
	case len(value) > maxLen:
		v.add(field, "must be at most %d characters", maxLen)
	}
}

// validatePublish checks everything Publish needs before anything is written.
func validatePublish(req *notifyv1.PublishRequest) violations {
	var v violations
	if len(req.GetIdempotencyKey()) > MaxIdempotencyKey {
		v.add("idempotency_key", "must be at most %d characters", MaxIdempotencyKey)
	}
	if problem := typeProblem(req.GetType()); problem != "" {
		v.add("type", "%s", problem)
	}

	switch target := req.GetRecipients().GetTarget().(type) {
	case nil:
		v.add("recipients", "is required: one of user_ids, all_devices, tokens, topic or condition")
	case *notifyv1.Recipients_UserIds:
		validateList(&v, "recipients.user_ids.user_ids", target.UserIds.GetUserIds(), MaxUserIDLen)
	case *notifyv1.Recipients_Tokens:
		validateList(&v, "recipients.tokens.tokens", target.Tokens.GetTokens(), MaxTokenLen)
		for i, tok := range target.Tokens.GetTokens() {
			if topic.IsKey(tok) {
				v.add(fmt.Sprintf("recipients.tokens.tokens[%d]", i), "%s", notAToken)
			}
		}
	case *notifyv1.Recipients_AllDevices:
	case *notifyv1.Recipients_Topic:
		switch name := strings.TrimPrefix(target.Topic, topic.TopicPrefix); {
		case name == "":
			v.add("recipients.topic", "must not be empty")
		case len(name) > MaxTopicLen:
			v.add("recipients.topic", "must be at most %d characters", MaxTopicLen)
		case !topic.ValidName(name):
			v.add("recipients.topic", "may contain only letters, digits and '-', '_', '.', '~', '%%' (FCM's topic names)")
		}
	case *notifyv1.Recipients_Condition:
		if len(target.Condition) > MaxConditionLen {
			v.add("recipients.condition", "must be at most %d characters", MaxConditionLen)
		} else if _, err := topic.ParseCondition(target.Condition); err != nil {
			v.add("recipients.condition", "is not an FCM condition: %v", err)
		}
	}

	c := req.GetContent()
	if c.GetTitle() == "" && c.GetBody() == "" && len(req.GetData()) == 0 {
		v.add("content", "needs a title or a body, unless data is set")
	}
	if img := c.GetImageUrl(); img != "" {
		if u, err := url.Parse(img); err != nil || u.Scheme != "https" || u.Host == "" {
			v.add("content.image_url", "must be an https URL")
		}
	}
	for k := range req.GetData() {
		switch {
		case k == "":
			v.add("data", "keys must not be empty")
		case k == "from" || k == "message_type" || strings.HasPrefix(k, "google.") || strings.HasPrefix(k, "gcm."):
			v.add("data["+k+"]", "is reserved by FCM")
		}
	}

	o := req.GetOptions()
	if _, ok := notifyv1.Priority_name[int32(o.GetPriority())]; !ok {
		v.add("options.priority", "is %d, not a known priority", o.GetPriority())
	}
	if ttl := o.GetTtl(); ttl != nil {
		if err := ttl.CheckValid(); err != nil {
			v.add("options.ttl", "is not a valid duration: %v", err)
		} else if d := ttl.AsDuration(); d <= 0 || d > MaxTTL {
			// AsDuration saturates about 292 years either way (still out of range), so the
			// answer states the Duration as given, in its JSON form, as FCM states its own TTL.
			v.add("options.ttl", "must be more than 0 and at most 28 days (%ds), got %s", int64(MaxTTL/time.Second), durationText(ttl))
		}
	}
	if at := o.GetSendAt(); at != nil {
		if err := at.CheckValid(); err != nil {
			v.add("options.send_at", "is not a valid time: %v", err)
		} else if now := time.Now(); at.AsTime().Sub(now) > MaxScheduleAhead {
			// The Duration saturates about 292 years ahead (still more than 30 days); the days
			// are counted in seconds, which do not overflow for any valid timestamp.
			days := (at.GetSeconds() - now.Unix()) / (24 * 60 * 60)
			v.add("options.send_at", "must be at most 30 days ahead, got %s (%d days ahead)", at.AsTime().Format(time.RFC3339Nano), days)
		}
	}
	if len(o.GetCollapseKey()) > MaxCollapseKeyLen {
		v.add("options.collapse_key", "must be at most %d characters", MaxCollapseKeyLen)
	}

	validatePlatformOptions(&v, o, c.GetTitle() != "" || c.GetBody() != "" || c.GetImageUrl() != "")

	if n := fcmPayloadSize(req); n > MaxFCMPayloadBytes {
		v.add("content", "makes an FCM payload (with data and platform options) of %d bytes; FCM accepts at most %d", n, MaxFCMPayloadBytes)
	}
	return v
}

// durationText writes a valid Duration in seconds, the unit of its JSON form ("3600s",
// "-1.5s"), exactly for any Duration: no time.Duration holds the longest (10,000 years).
func durationText(d *durationpb.Duration) string {
	secs, nanos := d.GetSeconds(), d.GetNanos()
	sign := ""
	if secs < 0 || nanos < 0 { // a valid Duration's seconds and nanos share their sign
		sign, secs, nanos = "-", -secs, -nanos
	}
	if nanos == 0 {
		return fmt.Sprintf("%s%ds", sign, secs)
	}
	return fmt.Sprintf("%s%d.%ss", sign, secs, strings.TrimRight(fmt.Sprintf("%09d", nanos), "0"))
}

// typeProblem says what is wrong with a notification type, "" when nothing is.
func typeProblem(t string) string {
	switch {
	case t == "":
		return "is required"
	case len(t) > MaxTypeLen:
		return fmt.Sprintf("must be at most %d characters", MaxTypeLen)
	case !typePattern.MatchString(t):
		return "may contain only letters, digits, '.', '_' and '-'"
	}
	return ""
}

// validatePlatformOptions checks options.android, .apns and .webpush. visible says whether
// the notification shows something (a title, body or image): the options that describe
// how a visible notification looks are refused on a data-only message, which shows nothing.
func validatePlatformOptions(v *violations, o *notifyv1.Options, visible bool) {
	const dataOnly = "applies to a visible notification; a data-only message (no title, body or image) shows nothing"
	text := func(field, value string, needsContent bool) {
		switch {
		case value == "":
		case len(value) > MaxOptionLen:
			v.add(field, "must be at most %d characters", MaxOptionLen)
		case needsContent && !visible:
			v.add(field, dataOnly)
		}
	}
	count := func(field string, set bool, n int32) {
		switch {
		case !set:
		case n < 0:
			v.add(field, "must not be negative, got %d", n)
		case !visible:
			v.add(field, dataOnly)
		}
	}

	a := o.GetAndroid()
	text("options.android.channel_id", a.GetChannelId(), true)
	text("options.android.sound", a.GetSound(), true)
	text("options.android.tag", a.GetTag(), true)
	text("options.android.click_action", a.GetClickAction(), true)
	count("options.android.notification_count", a != nil && a.NotificationCount != nil, a.GetNotificationCount())
	if vis := a.GetVisibility(); vis != notifyv1.AndroidVisibility_ANDROID_VISIBILITY_UNSPECIFIED {
		if _, ok := notifyv1.AndroidVisibility_name[int32(vis)]; !ok {
			v.add("options.android.visibility", "is %d, not a known visibility", vis)
		} else if !visible {
			v.add("options.android.visibility", dataOnly)
		}
	}

	ap := o.GetApns()
	text("options.apns.sound", ap.GetSound(), true)
	count("options.apns.badge", ap != nil && ap.Badge != nil, ap.GetBadge())
	text("options.apns.thread_id", ap.GetThreadId(), true)
	text("options.apns.category", ap.GetCategory(), true)
	if lvl := ap.GetInterruptionLevel(); lvl != notifyv1.InterruptionLevel_INTERRUPTION_LEVEL_UNSPECIFIED {
		if _, ok := notifyv1.InterruptionLevel_name[int32(lvl)]; !ok {
			v.add("options.apns.interruption_level", "is %d, not a known interruption level", lvl)
		} else if !visible {
			v.add("options.apns.interruption_level", dataOnly)
		}
	}

	if link := o.GetWebpush().GetLink(); link != "" {
		u, err := url.Parse(link)
		switch {
		case len(link) > MaxLinkLen:
			v.add("options.webpush.link", "must be at most %d characters", MaxLinkLen)
		case err != nil || u.Scheme != "https" || u.Host == "":
			v.add("options.webpush.link", "must be an absolute https URL (FCM refuses other links)")
		case !visible:
			v.add("options.webpush.link", dataOnly)
		}
	}
}

func validateList(v *violations, field string, items []string, maxLen int) {
	switch n := len(items); {
	case n == 0:
		v.add(field, "must not be empty")
		return
	case n > MaxRecipients:
		v.add(field, "has %d entries; at most %d are accepted per notification", n, MaxRecipients)
		return
	}
	for i, s := range items {
		switch {
		case s == "":
			v.add(fmt.Sprintf("%s[%d]", field, i), "must not be empty")
		case len(s) > maxLen:
			v.add(fmt.Sprintf("%s[%d]", field, i), "must be at most %d characters", maxLen)
		}
	}
}

// fcmPayloadSize is the size of what FCM counts against its 4096-byte limit: the
// notification and data parts of the message as JSON.
func fcmPayloadSize(req *notifyv1.PublishRequest) int {
	type notification struct {
		Title string `json:"title,omitempty"`
		Body  string `json:"body,omitempty"`
		Image string `json:"image,omitempty"`
	}
	c := req.GetContent()
	b, err := json.Marshal(struct {
		Notification notification      `json:"notification"`
		Data         map[string]string `json:"data,omitempty"`
	}{notification{c.GetTitle(), c.GetBody(), c.GetImageUrl()}, req.GetData()})
	if err != nil {
		return 0
	}
	// The platform options travel in the same message (the aps dictionary counts against
	// APNs' own 4 KB): their text is counted too.
	a, ap := req.GetOptions().GetAndroid(), req.GetOptions().GetApns()
	n := len(b)
	for _, s := range []string{a.GetChannelId(), a.GetSound(), a.GetTag(), a.GetClickAction(),
		ap.GetSound(), ap.GetThreadId(), ap.GetCategory(), req.GetOptions().GetWebpush().GetLink()} {
		n += len(s)
	}
	return n
}

// validateDevice checks one device registration; prefix names the field path.
func validateDevice(v *violations, prefix, userID, deviceID, token string, platform notifyv1.Platform) {
	v.required(prefix+"user_id", userID, MaxUserIDLen)
	v.required(prefix+"device_id", deviceID, MaxDeviceIDLen)
	v.required(prefix+"token", token, MaxTokenLen)
	if topic.IsKey(token) {
		v.add(prefix+"token", "%s", notAToken)
	}
	if _, ok := platforms[platform]; !ok {
		v.add(prefix+"platform", "must be PLATFORM_ANDROID, PLATFORM_IOS or PLATFORM_WEB")
	}
}

// platforms maps the API's platforms to the database's names.
var platforms = map[notifyv1.Platform]string{
	notifyv1.Platform_PLATFORM_ANDROID: "android",
	notifyv1.Platform_PLATFORM_IOS:     "ios",
	notifyv1.Platform_PLATFORM_WEB:     "web",
}

// platformValues maps the database's platform names back to the API's.
var platformValues = map[string]notifyv1.Platform{
	"android": notifyv1.Platform_PLATFORM_ANDROID,
	"ios":     notifyv1.Platform_PLATFORM_IOS,
	"web":     notifyv1.Platform_PLATFORM_WEB,
}
