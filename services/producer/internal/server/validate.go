package server

import (
	"encoding/json"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"

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
	MaxBatchDevices    = 10_000
)

var typePattern = regexp.MustCompile(`^[A-Za-z0-9._-]+$`)

// violations collects field violations; the request is refused when there is any.
type violations []*errdetails.BadRequest_FieldViolation

func (v *violations) add(field, format string, args ...any) {
	*v = append(*v, &errdetails.BadRequest_FieldViolation{Field: field, Description: fmt.Sprintf(format, args...)})
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
		v.add("recipients", "one of user_ids, all_devices or tokens is required")
	case *notifyv1.Recipients_UserIds:
		validateList(&v, "recipients.user_ids.user_ids", target.UserIds.GetUserIds(), MaxUserIDLen)
	case *notifyv1.Recipients_Tokens:
		validateList(&v, "recipients.tokens.tokens", target.Tokens.GetTokens(), MaxTokenLen)
	case *notifyv1.Recipients_AllDevices:
	}

	c := req.GetContent()
	if c.GetTitle() == "" && c.GetBody() == "" && len(req.GetData()) == 0 {
		v.add("content", "a notification needs a title, a body or data")
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
			v.add("data["+k+"]", "%q is reserved by FCM", k)
		}
	}

	o := req.GetOptions()
	if _, ok := notifyv1.Priority_name[int32(o.GetPriority())]; !ok {
		v.add("options.priority", "unknown priority %d", o.GetPriority())
	}
	if ttl := o.GetTtl(); ttl != nil {
		if err := ttl.CheckValid(); err != nil {
			v.add("options.ttl", "is not a valid duration: %v", err)
		} else if d := ttl.AsDuration(); d <= 0 || d > MaxTTL {
			v.add("options.ttl", "must be more than 0 and at most 28 days (672h), got %s", d)
		}
	}
	if len(o.GetCollapseKey()) > MaxCollapseKeyLen {
		v.add("options.collapse_key", "must be at most %d characters", MaxCollapseKeyLen)
	}

	if n := fcmPayloadSize(req); n > MaxFCMPayloadBytes {
		v.add("content", "the FCM payload (notification and data) is %d bytes; FCM accepts at most %d", n, MaxFCMPayloadBytes)
	}
	return v
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
	return len(b)
}

// validateDevice checks one device registration; prefix names the field path.
func validateDevice(v *violations, prefix, userID, deviceID, token string, platform notifyv1.Platform) {
	required := func(field, value string, maxLen int) {
		switch {
		case value == "":
			v.add(prefix+field, "is required")
		case len(value) > maxLen:
			v.add(prefix+field, "must be at most %d characters", maxLen)
		}
	}
	required("user_id", userID, MaxUserIDLen)
	required("device_id", deviceID, MaxDeviceIDLen)
	required("token", token, MaxTokenLen)
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
