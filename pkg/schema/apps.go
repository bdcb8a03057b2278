package schema

import (
	"errors"
	"fmt"

	notifyv1 "notify/proto/gen/notify/v1"
)

// DefaultApp is the app of every device, notification and API key that names none, and the
// app the sender's and retrier's FCM_* variables define.
const DefaultApp = "default"

// MaxAppNameLen bounds an app name.
const MaxAppNameLen = 63

// CheckAppName reports what is wrong with name as an app name, or nil: 1 to 63 lowercase
// letters, digits, '-' and '_', starting with a letter or digit (it is a metric label and a
// column value).
func CheckAppName(name string) error {
	if name == "" {
		return errors.New("required")
	}
	if len(name) > MaxAppNameLen {
		return fmt.Errorf("%q: longer than %d characters", name, MaxAppNameLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		ok := 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || i > 0 && (c == '-' || c == '_')
		if !ok {
			return fmt.Errorf("%q: want lowercase letters, digits, '-' and '_', starting with a letter or digit", name)
		}
	}
	return nil
}

// AppOf returns the app a PublishRequest is for: its app, or DefaultApp when it names none.
func AppOf(req *notifyv1.PublishRequest) string {
	if a := req.GetApp(); a != "" {
		return a
	}
	return DefaultApp
}
