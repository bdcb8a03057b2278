package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/protobuf/proto"

	"notify/pkg/rabbit"
	busv1 "notify/proto/gen/notify/bus/v1"
	notifyv1 "notify/proto/gen/notify/v1"
)

// received is one send the emulator saw, from GET /emulator/messages.
type received struct {
	Token      string    `json:"token"`
	Status     int       `json:"status"`
	Error      string    `json:"error"`
	ReceivedAt time.Time `json:"received_at"`
}

func (s *stack) emulatorMessages(token string) []received {
	s.t.Helper()
	resp, err := http.Get(s.emulatorURL + "/emulator/messages?limit=1000&token=" + token)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct{ Messages []received }
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		s.t.Fatal(err)
	}
	return out.Messages
}

func registerOne(t *testing.T, devices notifyv1.DeviceServiceClient, user, token string) {
	t.Helper()
	if _, err := devices.RegisterDevice(ctxT(t), &notifyv1.RegisterDeviceRequest{
		UserId: user, DeviceId: user + "-device", Token: token, Platform: notifyv1.Platform_PLATFORM_ANDROID,
	}); err != nil {
		t.Fatalf("RegisterDevice(%s): %v", user, err)
	}
}

func publishTo(t *testing.T, notifications notifyv1.NotificationServiceClient, users ...string) string {
	t.Helper()
	resp, err := notifications.Publish(ctxT(t), &notifyv1.PublishRequest{
		Type:       "e2e.retry",
		Recipients: &notifyv1.Recipients{Target: &notifyv1.Recipients_UserIds{UserIds: &notifyv1.UserIDs{UserIds: users}}},
		Content:    &notifyv1.Content{Title: "retry me"},
	})
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	return resp.GetNotificationId()
}

func TestTransientFailuresAreRetriedWithDoublingWaits(t *testing.T) {
	s := newStack(t)
	s.start("fcm-emulator", nil)
	s.start("producer", nil)
	retry := map[string]string{"RETRY_BASE_DELAY": "400ms", "RETRY_MAX_DELAY": "3200ms", "RETRY_MAX_ATTEMPTS": "6"}
	s.start("sender", retry)
	s.start("retrier", retry)
	notifications, devices, admin := s.clients()

	// flaky3-: the emulator answers INTERNAL three times, then accepts.
	registerOne(t, devices, "rita", "flaky3-rita")
	registerOne(t, devices, "fred", "fresh-fred")
	slow := publishTo(t, notifications, "rita")
	// Its first failure recorded: the emulator answering it is not enough, the sender records
	// the outcome after that (on a loaded CI machine the fresh notification below was once
	// delivered first, and rita's still read PENDING).
	waitFor(t, 10*time.Second, "the first failure, recorded", func() bool {
		r, err := admin.GetNotification(ctxT(t), &notifyv1.GetNotificationRequest{NotificationId: slow})
		return err == nil && r.GetNotification().GetStatus() == notifyv1.NotificationStatus_NOTIFICATION_STATUS_RETRYING
	})

	// A fresh notification published while rita's waits for its retries (at least 400 ms,
	// 800 ms and 1.6 s) goes out at once, and rita's is still waiting when it has.
	fresh := publishTo(t, notifications, "fred")
	n := waitFinal(t, admin, fresh, 10*time.Second)
	if n.GetStatus() != notifyv1.NotificationStatus_NOTIFICATION_STATUS_DELIVERED {
		t.Fatalf("fresh notification %v, want DELIVERED", n.GetStatus())
	}
	got, err := admin.GetNotification(ctxT(t), &notifyv1.GetNotificationRequest{NotificationId: slow})
	if err != nil {
		t.Fatal(err)
	}
	if st := got.GetNotification().GetStatus(); st != notifyv1.NotificationStatus_NOTIFICATION_STATUS_RETRYING {
		t.Errorf("while the fresh one was delivered, the retried one was %v, want RETRYING", st)
	}

	waitFor(t, 30*time.Second, "the retried notification to be delivered", func() bool {
		got, err = admin.GetNotification(ctxT(t), &notifyv1.GetNotificationRequest{NotificationId: slow})
		return err == nil && got.GetNotification().GetStatus() == notifyv1.NotificationStatus_NOTIFICATION_STATUS_DELIVERED
	})
	if d := got.GetDeliveries(); len(d) != 1 || d[0].GetAttempts() != 4 || d[0].GetOutcome() != notifyv1.DeliveryOutcome_DELIVERY_OUTCOME_DELIVERED {
		t.Errorf("deliveries %v, want one delivered on attempt 4", d)
	}
	sends := s.emulatorMessages("flaky3-rita")
	if len(sends) != 4 {
		t.Fatalf("emulator saw %d sends of the flaky token, want 4", len(sends))
	}
	// The waits double: ≥400ms, ≥800ms, ≥1600ms.
	for i, want := range []time.Duration{400 * time.Millisecond, 800 * time.Millisecond, 1600 * time.Millisecond} {
		gap := sends[i+1].ReceivedAt.Sub(sends[i].ReceivedAt)
		t.Logf("wait before attempt %d: %s", i+2, gap.Round(time.Millisecond))
		if gap < want {
			t.Errorf("wait before attempt %d was %s, want at least %s", i+2, gap, want)
		}
	}
}

// slackFake stands in for Slack's incoming webhook and records what it is sent.
type slackFake struct {
	mu     sync.Mutex
	bodies []string
	srv    *httptest.Server
}

func newSlackFake(t *testing.T) *slackFake {
	f := &slackFake{}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		defer f.mu.Unlock()
		f.bodies = append(f.bodies, string(b))
		_, _ = io.WriteString(w, "ok")
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *slackFake) posts() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.bodies...)
}

func TestExhaustedRetriesAreDeadLetteredAndAlerted(t *testing.T) {
	s := newStack(t)
	// A long Retry-After on 503 keeps the SDK from retrying inside one call; ours caps it at
	// the last wait level.
	s.start("fcm-emulator", map[string]string{"FCM_EMULATOR_UNAVAILABLE_RETRY_AFTER": "180s"})
	s.start("producer", nil)
	retry := map[string]string{"RETRY_BASE_DELAY": "200ms", "RETRY_MAX_DELAY": "400ms", "RETRY_MAX_ATTEMPTS": "3"}
	s.start("sender", retry)
	s.start("retrier", retry)
	slack := newSlackFake(t)
	s.start("deadletter", map[string]string{
		"SLACK_WEBHOOK_URL": slack.srv.URL + "/services/T000/B000/XXXX", "ALERT_INTERVAL": "200ms", "ALERT_MIN_INTERVAL": "200ms",
	})
	notifications, devices, admin := s.clients()

	registerOne(t, devices, "una", "unavailable-una")
	id := publishTo(t, notifications, "una")
	var got *notifyv1.GetNotificationResponse
	waitFor(t, 30*time.Second, "the notification to fail", func() bool {
		var err error
		got, err = admin.GetNotification(ctxT(t), &notifyv1.GetNotificationRequest{NotificationId: id})
		return err == nil && got.GetNotification().GetStatus() == notifyv1.NotificationStatus_NOTIFICATION_STATUS_FAILED
	})
	if d := got.GetDeliveries(); len(d) != 1 || d[0].GetAttempts() != 3 || d[0].GetErrorCode() != "UNAVAILABLE" {
		t.Errorf("deliveries %v, want one failed after 3 attempts with UNAVAILABLE", d)
	}
	if n := len(s.emulatorMessages("unavailable-una")); n != 3 {
		t.Errorf("emulator saw %d sends, want 3 (RETRY_MAX_ATTEMPTS)", n)
	}

	var reason, code string
	var attempts, tokens int
	waitFor(t, 10*time.Second, "the dead-letter row", func() bool {
		err := s.db.Pool.QueryRow(ctxT(t), `SELECT reason, coalesce(error_code, ''), attempts, token_count
			FROM dead_letters WHERE notification_id = $1`, id).Scan(&reason, &code, &attempts, &tokens)
		return err == nil
	})
	if reason != "retries_exhausted" || code != "UNAVAILABLE" || attempts != 3 || tokens != 1 {
		t.Errorf("dead letter: reason %s, code %s, %d attempts, %d tokens; want retries_exhausted, UNAVAILABLE, 3, 1", reason, code, attempts, tokens)
	}
	waitFor(t, 10*time.Second, "a Slack alert naming the notification", func() bool {
		for _, p := range slack.posts() {
			if strings.Contains(p, id) && strings.Contains(p, "retries_exhausted") {
				return true
			}
		}
		return false
	})
}

// publishRaw puts messages straight onto the test topology's exchange, as a buggy or
// outdated producer might.
func publishRaw(t *testing.T, s *stack, msgs []rabbit.Message) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	topo := rabbit.NewTopology(s.topology, nil)
	conn := rabbit.NewConn(s.amqpURL, log, rabbit.ConnOptions{Name: "e2e-raw", Topology: &topo})
	done := make(chan error, 1)
	go func() { done <- conn.Run(ctx) }()
	pub := rabbit.NewPublisher(conn, topo.Exchange(), rabbit.PublisherOptions{})
	if err := pub.Publish(ctxT(t), msgs...); err != nil {
		t.Fatalf("publish raw messages: %v", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("connection: %v", err)
	}
}

func TestPoisonMessagesEndAsDeadLettersAndKillingServicesLosesNothing(t *testing.T) {
	s := newStack(t)
	s.start("fcm-emulator", nil)
	s.start("producer", nil)
	s.start("sender", nil)
	dl := s.start("deadletter", map[string]string{"DEADLETTER_WORKERS": "1", "ALERT_INTERVAL": "1h"})

	// 1,500 tasks naming notifications that do not exist and 500 that are not protobuf.
	const unknown, garbage = 1500, 500
	var msgs []rabbit.Message
	for i := range unknown {
		body, _ := proto.Marshal(&busv1.SendTask{NotificationId: uuid.NewString(), Cause: "publish"})
		msgs = append(msgs, rabbit.Message{RoutingKey: rabbit.SendKey, MessageID: fmt.Sprintf("unknown-%d", i),
			Type: "notify.bus.v1.SendTask", Body: body})
	}
	for i := range garbage {
		msgs = append(msgs, rabbit.Message{RoutingKey: rabbit.SendKey, MessageID: fmt.Sprintf("garbage-%d", i),
			Type: "notify.bus.v1.SendTask", Body: []byte("\xff\xfenot a protobuf " + fmt.Sprint(i))})
	}
	publishRaw(t, s, msgs)

	count := func(reason string) int {
		var n int
		if err := s.db.Pool.QueryRow(ctxT(t), "SELECT count(*) FROM dead_letters WHERE reason = $1", reason).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	// Kill the deadletter service in the middle of the burst, then start it again.
	waitFor(t, time.Minute, "dead letters to be stored", func() bool { return count("unknown_notification")+count("undecodable") >= 200 })
	dl.kill()
	stored := count("unknown_notification") + count("undecodable")
	t.Logf("deadletter killed after storing %d of %d", stored, unknown+garbage)
	s.start("deadletter", map[string]string{"ALERT_INTERVAL": "1h"})

	waitFor(t, time.Minute, "every poison message to be stored", func() bool {
		return count("unknown_notification") == unknown && count("undecodable") == garbage
	})
	// Nothing loops: after a pause there are no more rows and the queues are empty.
	time.Sleep(time.Second)
	var total int
	if err := s.db.Pool.QueryRow(ctxT(t), "SELECT count(*) FROM dead_letters").Scan(&total); err != nil {
		t.Fatal(err)
	}
	if total != unknown+garbage {
		t.Errorf("%d dead-letter rows, want exactly %d", total, unknown+garbage)
	}
	// The management API's queue figures are statistics the broker refreshes every few
	// seconds (collect_statistics_interval), so a queue emptied a moment ago can still read
	// non-empty: wait for them to catch up, and fail only if a queue stays non-empty.
	for _, q := range []string{".send", ".dead"} {
		var info struct {
			Messages int `json:"messages"`
		}
		empty := func() bool {
			if err := s.mgmt(http.MethodGet, "/api/queues/%2F/"+s.topology+q, &info); err != nil {
				t.Fatal(err)
			}
			return info.Messages == 0
		}
		deadline := time.Now().Add(30 * time.Second)
		for !empty() && time.Now().Before(deadline) {
			time.Sleep(time.Second)
		}
		if info.Messages != 0 {
			t.Errorf("queue %s still holds %d messages 30s after every dead letter was stored", s.topology+q, info.Messages)
		}
	}
}

func TestRetrierKilledMidWorkLosesNothing(t *testing.T) {
	s := newStack(t)
	s.start("fcm-emulator", nil)
	s.start("producer", nil)
	retry := map[string]string{"RETRY_BASE_DELAY": "300ms", "RETRY_MAX_DELAY": "600ms", "RETRY_MAX_ATTEMPTS": "5"}
	s.start("sender", retry)
	r := s.start("retrier", retry)
	notifications, devices, admin := s.clients()

	// 2,000 tokens that each fail twice with INTERNAL, then succeed: 4 chunks, each retried twice.
	batch := &notifyv1.RegisterDevicesRequest{}
	for i := range 2000 {
		batch.Devices = append(batch.Devices, &notifyv1.Device{UserId: "kim", DeviceId: fmt.Sprintf("kim-%04d", i),
			Token: fmt.Sprintf("flaky2-kim-%04d", i), Platform: notifyv1.Platform_PLATFORM_ANDROID})
	}
	if _, err := devices.RegisterDevices(ctxT(t), batch); err != nil {
		t.Fatal(err)
	}
	id := publishTo(t, notifications, "kim")
	waitFor(t, 30*time.Second, "retries to be under way", func() bool { return s.emulatorStats(false).Requests >= 2500 })
	r.kill()
	t.Logf("retrier killed after %d sends", s.emulatorStats(false).Requests)
	s.start("retrier", retry)

	var got *notifyv1.GetNotificationResponse
	waitFor(t, time.Minute, "every token to be delivered", func() bool {
		var err error
		got, err = admin.GetNotification(ctxT(t), &notifyv1.GetNotificationRequest{NotificationId: id, PageSize: 1})
		return err == nil && got.GetNotification().GetStatus() == notifyv1.NotificationStatus_NOTIFICATION_STATUS_DELIVERED
	})
	if c := got.GetNotification().GetCounts(); c.GetDelivered() != 2000 || c.GetTotal() != 2000 {
		t.Errorf("counts %v, want 2000 of 2000 delivered", c)
	}
	st := s.emulatorStats(true)
	for i := range 2000 {
		tok := fmt.Sprintf("flaky2-kim-%04d", i)
		if ts := st.Tokens[tok]; ts.Delivered < 1 {
			t.Errorf("token %s never delivered (%d sends)", tok, ts.Received)
		}
	}
}
