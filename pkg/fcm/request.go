package fcm

import (
	"strings"

	notifyv1 "notify/proto/gen/notify/v1"
)

// FromRequest is the Message a published (and validated) request sends. The TTL is left at
// 0: the sender passes what remains of the notification's TTL at each send.
func FromRequest(req *notifyv1.PublishRequest) Message {
	c, o := req.GetContent(), req.GetOptions()
	m := Message{
		Title:       c.GetTitle(),
		Body:        c.GetBody(),
		ImageURL:    c.GetImageUrl(),
		Data:        req.GetData(),
		CollapseKey: o.GetCollapseKey(),
	}
	if o.GetPriority() == notifyv1.Priority_PRIORITY_HIGH {
		m.Priority = PriorityHigh
	}
	if a := o.GetAndroid(); a != nil {
		m.Android = AndroidOptions{
			ChannelID:   a.GetChannelId(),
			Sound:       a.GetSound(),
			Tag:         a.GetTag(),
			ClickAction: a.GetClickAction(),
		}
		if a.NotificationCount != nil {
			n := int(a.GetNotificationCount())
			m.Android.NotificationCount = &n
		}
		if v := a.GetVisibility(); v != notifyv1.AndroidVisibility_ANDROID_VISIBILITY_UNSPECIFIED {
			m.Android.Visibility = strings.TrimPrefix(v.String(), "ANDROID_VISIBILITY_")
		}
	}
	if a := o.GetApns(); a != nil {
		m.APNS = APNSOptions{
			Sound:            a.GetSound(),
			ThreadID:         a.GetThreadId(),
			Category:         a.GetCategory(),
			ContentAvailable: a.GetContentAvailable(),
		}
		if a.Badge != nil {
			n := int(a.GetBadge())
			m.APNS.Badge = &n
		}
		m.APNS.InterruptionLevel = interruptionLevels[a.GetInterruptionLevel()]
	}
	m.Webpush.Link = o.GetWebpush().GetLink()
	return m
}

// interruptionLevels are APNs' names of the interruption levels.
var interruptionLevels = map[notifyv1.InterruptionLevel]string{
	notifyv1.InterruptionLevel_INTERRUPTION_LEVEL_PASSIVE:        "passive",
	notifyv1.InterruptionLevel_INTERRUPTION_LEVEL_ACTIVE:         "active",
	notifyv1.InterruptionLevel_INTERRUPTION_LEVEL_TIME_SENSITIVE: "time-sensitive",
	notifyv1.InterruptionLevel_INTERRUPTION_LEVEL_CRITICAL:       "critical",
}
