package e2e

import (
	"net/url"
	"testing"
	"time"

	notifyv1 "notify/proto/gen/notify/v1"
)

// TestTopicAndConditionSendsDeliver publishes to a topic, to a condition and to a topic
// whose first send fails: each is one FCM send to the topic or condition, one outcome
// recorded under its key, retried like a token.
func TestTopicAndConditionSendsDeliver(t *testing.T) {
	s := newStack(t)
	s.start("fcm-emulator", nil)
	s.start("producer", nil)
	retry := map[string]string{"RETRY_BASE_DELAY": "400ms", "RETRY_MAX_DELAY": "800ms", "RETRY_MAX_ATTEMPTS": "3"}
	s.start("sender", retry)
	s.start("retrier", retry)
	notifications, _, admin := s.clients()

	publish := func(r *notifyv1.Recipients) string {
		t.Helper()
		resp, err := notifications.Publish(ctxT(t), &notifyv1.PublishRequest{
			Type: "e2e.topic", Recipients: r, Content: &notifyv1.Content{Title: "Kick-off"}, Data: map[string]string{"match": "7"},
		})
		if err != nil {
			t.Fatalf("Publish to %v: %v", r, err)
		}
		return resp.GetNotificationId()
	}
	const cond = "'sports' in topics && ('news' in topics || !('muted' in topics))"
	topicID := publish(&notifyv1.Recipients{Target: &notifyv1.Recipients_Topic{Topic: "sports"}})
	condID := publish(&notifyv1.Recipients{Target: &notifyv1.Recipients_Condition{Condition: cond}})
	// flaky1-: the emulator answers INTERNAL once for this topic, then accepts.
	flakyID := publish(&notifyv1.Recipients{Target: &notifyv1.Recipients_Topic{Topic: "/topics/flaky1-scores"}})

	for id, key := range map[string]string{topicID: "/topics/sports", condID: "condition:" + cond, flakyID: "/topics/flaky1-scores"} {
		var resp *notifyv1.GetNotificationResponse
		waitFor(t, time.Minute, "notification "+id+" to be delivered", func() bool {
			var err error
			resp, err = admin.GetNotification(ctxT(t), &notifyv1.GetNotificationRequest{NotificationId: id})
			return err == nil && resp.GetNotification().GetStatus() == notifyv1.NotificationStatus_NOTIFICATION_STATUS_DELIVERED
		})
		c := resp.GetNotification().GetCounts()
		d := resp.GetDeliveries()
		if c.GetTotal() != 1 || c.GetDelivered() != 1 || len(d) != 1 || d[0].GetToken() != key || d[0].GetDeviceId() != "" {
			t.Errorf("%s: counts %v, deliveries %v; want one delivered outcome under %q", key, c, d, key)
		}
		if key == "/topics/flaky1-scores" && d[0].GetAttempts() != 2 {
			t.Errorf("%s: delivered on attempt %d, want 2 (one retry)", key, d[0].GetAttempts())
		}
	}

	var page struct {
		Messages []struct {
			Status  int
			Payload struct {
				Token, Topic, Condition string
				Notification            struct{ Title string }
				Data                    map[string]string
			}
		}
	}
	getJSON(t, s.emulatorURL+"/emulator/messages?token="+url.QueryEscape("/topics/sports"), &page)
	if len(page.Messages) != 1 || page.Messages[0].Payload.Topic != "sports" || page.Messages[0].Payload.Token != "" ||
		page.Messages[0].Payload.Notification.Title != "Kick-off" || page.Messages[0].Payload.Data["match"] != "7" {
		t.Errorf("emulator's messages for topic sports: %+v, want one send to the topic with the content and data", page.Messages)
	}
	getJSON(t, s.emulatorURL+"/emulator/messages?token="+url.QueryEscape("condition:"+cond), &page)
	if len(page.Messages) != 1 || page.Messages[0].Payload.Condition != cond {
		t.Errorf("emulator's messages for the condition: %+v, want one send to %q", page.Messages, cond)
	}
	getJSON(t, s.emulatorURL+"/emulator/messages?token="+url.QueryEscape("/topics/flaky1-scores"), &page)
	if len(page.Messages) != 2 || page.Messages[0].Status != 500 || page.Messages[1].Status != 200 {
		t.Errorf("emulator's messages for topic flaky1-scores: %+v, want a 500 then a 200", page.Messages)
	}

	// Bad topics and conditions are refused naming the field; nothing is written.
	for _, r := range []*notifyv1.Recipients{
		{Target: &notifyv1.Recipients_Topic{Topic: "sports news"}},
		{Target: &notifyv1.Recipients_Condition{Condition: "'a' in topics || 'b' in topics || 'c' in topics || 'd' in topics || 'e' in topics || 'f' in topics"}},
	} {
		_, err := notifications.Publish(ctxT(t), &notifyv1.PublishRequest{Type: "e2e.topic", Recipients: r, Content: &notifyv1.Content{Title: "x"}})
		if st := statusFields(err); len(st) != 1 || !(st["recipients.topic"] || st["recipients.condition"]) {
			t.Errorf("Publish to %v = %v, want INVALID_ARGUMENT on recipients.topic or recipients.condition", r, err)
		}
	}
	var rows int
	if err := s.db.Pool.QueryRow(ctxT(t), "SELECT count(*) FROM notifications").Scan(&rows); err != nil || rows != 3 {
		t.Errorf("notifications: %d rows (%v), want the 3 accepted", rows, err)
	}
}
