package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	notifyv1 "notify/proto/gen/notify/v1"
)

// registerUsers registers perUser devices for each of users users in batches, tokens
// named prefix-<user>-<device>, and returns the user ids.
func registerUsers(t *testing.T, devices notifyv1.DeviceServiceClient, prefix string, users, perUser int) []string {
	t.Helper()
	var ids []string
	batch := &notifyv1.RegisterDevicesRequest{}
	flush := func() {
		if len(batch.Devices) == 0 {
			return
		}
		if _, err := devices.RegisterDevices(ctxT(t), batch); err != nil {
			t.Fatalf("RegisterDevices: %v", err)
		}
		batch = &notifyv1.RegisterDevicesRequest{}
	}
	for u := range users {
		user := fmt.Sprintf("%s-user-%04d", prefix, u)
		ids = append(ids, user)
		for d := range perUser {
			batch.Devices = append(batch.Devices, &notifyv1.Device{
				UserId:   user,
				DeviceId: fmt.Sprintf("%s-dev-%04d-%02d", prefix, u, d),
				Token:    fmt.Sprintf("%s-tok-%04d-%02d", prefix, u, d),
				Platform: notifyv1.Platform_PLATFORM_ANDROID,
			})
			if len(batch.Devices) == 5000 {
				flush()
			}
		}
	}
	flush()
	return ids
}

// waitFinal polls GetNotification until the notification leaves PENDING.
func waitFinal(t *testing.T, admin notifyv1.AdminServiceClient, id string, timeout time.Duration) *notifyv1.Notification {
	t.Helper()
	var n *notifyv1.Notification
	waitFor(t, timeout, "notification "+id+" to be sent", func() bool {
		resp, err := admin.GetNotification(ctxT(t), &notifyv1.GetNotificationRequest{NotificationId: id, PageSize: 1})
		if err != nil {
			t.Fatalf("GetNotification: %v", err)
		}
		n = resp.GetNotification()
		return n.GetStatus() != notifyv1.NotificationStatus_NOTIFICATION_STATUS_PENDING
	})
	return n
}

func TestPublishDeliversEveryTokenOnce(t *testing.T) {
	s := newStack(t)
	s.start("fcm-emulator", nil)
	s.start("producer", nil)
	s.start("sender", nil)
	notifications, devices, admin := s.clients()

	// 1,200 live tokens over 100 users plus one FCM no longer knows: 1,201 tokens, three
	// multicasts (500 + 500 + 201).
	users := registerUsers(t, devices, "live", 100, 12)
	if _, err := devices.RegisterDevice(ctxT(t), &notifyv1.RegisterDeviceRequest{
		UserId: users[0], DeviceId: "dead-device", Token: "unregistered-dead-token", Platform: notifyv1.Platform_PLATFORM_IOS,
	}); err != nil {
		t.Fatal(err)
	}

	req := &notifyv1.PublishRequest{
		IdempotencyKey: "e2e-once",
		Type:           "e2e.fanout",
		Recipients:     &notifyv1.Recipients{Target: &notifyv1.Recipients_UserIds{UserIds: &notifyv1.UserIDs{UserIds: users}}},
		Content:        &notifyv1.Content{Title: "Hello", Body: "from the e2e test", ImageUrl: "https://example.com/parcel.png"},
		Data:           map[string]string{"order": "42"},
		Options: &notifyv1.Options{
			Priority: notifyv1.Priority_PRIORITY_HIGH, Ttl: durationpb.New(time.Hour), CollapseKey: "order-42",
		},
	}
	first, err := notifications.Publish(ctxT(t), req)
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	again, err := notifications.Publish(ctxT(t), req)
	if err != nil {
		t.Fatalf("Publish again: %v", err)
	}
	if !again.GetDuplicate() || again.GetNotificationId() != first.GetNotificationId() {
		t.Fatalf("repeated Publish = %v, want the first id %s with duplicate=true", again, first.GetNotificationId())
	}

	n := waitFinal(t, admin, first.GetNotificationId(), time.Minute)
	c := n.GetCounts()
	if n.GetStatus() != notifyv1.NotificationStatus_NOTIFICATION_STATUS_DELIVERED || c.GetTotal() != 1201 ||
		c.GetDelivered() != 1200 || c.GetInvalid() != 1 {
		t.Errorf("notification = %v %v, want DELIVERED with 1201 tokens: 1200 delivered, 1 invalid", n.GetStatus(), c)
	}

	// The emulator saw every token exactly once, despite the duplicate Publish.
	st := s.emulatorStats(true)
	if st.Requests != 1201 || len(st.Tokens) != 1201 {
		t.Errorf("emulator got %d requests for %d tokens, want 1201 for 1201", st.Requests, len(st.Tokens))
	}
	for tok, ts := range st.Tokens {
		if ts.Received != 1 {
			t.Errorf("token %s received %d times, want once", tok, ts.Received)
		}
	}

	// The request's content and options reached FCM on every platform's terms.
	var sent struct {
		Messages []struct {
			Payload struct {
				Notification struct{ Title, Body, Image string }
				Data         map[string]string
				Android      struct {
					Priority    string
					TTL         string
					CollapseKey string `json:"collapse_key"`
				}
				APNS struct{ Headers map[string]string }
			}
		}
	}
	getJSON(t, s.emulatorURL+"/emulator/messages?limit=1&token=live-tok-0000-00", &sent)
	if len(sent.Messages) != 1 {
		t.Fatalf("emulator has %d messages for live-tok-0000-00, want 1", len(sent.Messages))
	}
	p := sent.Messages[0].Payload
	if p.Notification.Title != "Hello" || p.Notification.Body != "from the e2e test" || p.Notification.Image != "https://example.com/parcel.png" ||
		p.Data["order"] != "42" || p.Android.Priority != "high" || p.Android.CollapseKey != "order-42" ||
		!strings.HasPrefix(p.Android.TTL, "35") || p.APNS.Headers["apns-priority"] != "10" || p.APNS.Headers["apns-collapse-id"] != "order-42" {
		t.Errorf("FCM payload %+v does not carry the request's content and options", p)
	}

	// The database holds one delivery per token, and the dead token is deactivated.
	var rows, delivered int
	var reason string
	err = s.db.Pool.QueryRow(ctxT(t), `SELECT count(*), count(*) FILTER (WHERE outcome = 'delivered'),
		(SELECT deactivation_reason FROM devices WHERE device_id = 'dead-device')
		FROM deliveries WHERE notification_id = $1`, first.GetNotificationId()).Scan(&rows, &delivered, &reason)
	if err != nil {
		t.Fatal(err)
	}
	if rows != 1201 || delivered != 1200 || reason != "UNREGISTERED" {
		t.Errorf("database: %d deliveries (%d delivered), dead device deactivated for %q; want 1201, 1200, UNREGISTERED", rows, delivered, reason)
	}
	check, err := devices.CheckDevice(ctxT(t), &notifyv1.CheckDeviceRequest{UserId: users[0], DeviceId: "dead-device"})
	if err != nil || check.GetRegistered() {
		t.Errorf("CheckDevice(dead device) = %v, %v; want registered=false", check, err)
	}
	check, err = devices.CheckDevice(ctxT(t), &notifyv1.CheckDeviceRequest{UserId: users[0], DeviceId: "live-dev-0000-00"})
	if err != nil || !check.GetRegistered() {
		t.Errorf("CheckDevice(live device) = %v, %v; want registered=true", check, err)
	}
}

func TestSenderKilledMidBroadcastDeliversEverything(t *testing.T) {
	s := newStack(t)
	s.start("fcm-emulator", map[string]string{"FCM_EMULATOR_LATENCY": "20ms"})
	s.start("producer", nil)
	// At most one task with two chunks of 500 in flight: the bound on re-sent tokens.
	const workers, chunks, inFlightBound = 1, 2, 1 * 2 * 500
	senderEnv := map[string]string{
		"SEND_WORKERS": fmt.Sprint(workers), "SEND_CHUNK_CONCURRENCY": fmt.Sprint(chunks), "FCM_MAX_CONCURRENT_SENDS": "2",
	}
	sender := s.start("sender", senderEnv)
	notifications, devices, admin := s.clients()

	const total = 10_000
	registerUsers(t, devices, "bcast", 1000, 10)
	resp, err := notifications.Publish(ctxT(t), &notifyv1.PublishRequest{
		Type:       "e2e.broadcast",
		Recipients: &notifyv1.Recipients{Target: &notifyv1.Recipients_AllDevices{AllDevices: &notifyv1.AllDevices{}}},
		Content:    &notifyv1.Content{Title: "Everyone", Body: "gets this once"},
	})
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}

	waitFor(t, time.Minute, "the broadcast to be under way", func() bool { return s.emulatorStats(false).Requests >= 2500 })
	sender.kill()
	killedAt := s.emulatorStats(false).Requests
	if killedAt >= total {
		t.Fatalf("the sender finished (%d sends) before it was killed; slow the emulator down", killedAt)
	}
	s.start("sender", senderEnv)

	n := waitFinal(t, admin, resp.GetNotificationId(), 2*time.Minute)
	if n.GetStatus() != notifyv1.NotificationStatus_NOTIFICATION_STATUS_DELIVERED || n.GetCounts().GetDelivered() != total {
		t.Fatalf("notification = %v %v, want DELIVERED with %d delivered", n.GetStatus(), n.GetCounts(), total)
	}
	st := s.emulatorStats(true)
	missing, twice := 0, 0
	for u := range 1000 {
		for d := range 10 {
			switch st.Tokens[fmt.Sprintf("bcast-tok-%04d-%02d", u, d)].Received {
			case 0:
				missing++
			case 1:
			default:
				twice++
			}
		}
	}
	resent := int(st.Requests) - total
	t.Logf("killed after %d sends; %d tokens re-sent after the restart (bound %d)", killedAt, resent, inFlightBound)
	if missing > 0 {
		t.Errorf("%d tokens never reached FCM", missing)
	}
	if resent > inFlightBound || twice > inFlightBound {
		t.Errorf("%d sends beyond one per token (%d tokens twice), want at most the in-flight chunks' %d", resent, twice, inFlightBound)
	}
}

// proxy forwards TCP connections to a target and can be cut (setDown) or stalled
// (setStalled) and restored, so a test can make RabbitMQ or PostgreSQL unreachable for one
// service without touching the server itself.
type proxy struct {
	ln      net.Listener
	target  string
	mu      sync.Mutex
	down    bool
	stalled chan struct{} // non-nil while stalled; closed when the stall ends
	conns   []net.Conn
}

func newProxy(t *testing.T, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target}
	go p.serve()
	t.Cleanup(func() { ln.Close(); p.setStalled(false); p.setDown(true) })
	return p
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

func (p *proxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.down {
			p.mu.Unlock()
			c.Close()
			continue
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.conns = append(p.conns, c, up)
		p.mu.Unlock()
		go p.pipe(up, c)
		go p.pipe(c, up)
	}
}

// pipe copies src to dst until either ends, holding every read back while the proxy is
// stalled (the peers see a connection that stays open and says nothing).
func (p *proxy) pipe(dst, src net.Conn) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			stalled := p.stalled
			p.mu.Unlock()
			if stalled != nil {
				<-stalled
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// setDown cuts every connection and refuses new ones (down) or accepts them again.
func (p *proxy) setDown(down bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = down
	if down {
		for _, c := range p.conns {
			c.Close()
		}
		p.conns = nil
	}
}

// setStalled holds every byte in both directions (stalled) or lets them through again.
// Connections stay open meanwhile and new ones are accepted but hear nothing.
func (p *proxy) setStalled(stalled bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case stalled && p.stalled == nil:
		p.stalled = make(chan struct{})
	case !stalled && p.stalled != nil:
		close(p.stalled)
		p.stalled = nil
	}
}

func TestPublishWhileBrokerDownIsDeliveredLater(t *testing.T) {
	s := newStack(t)
	s.start("fcm-emulator", nil)
	s.start("sender", nil) // declares the topology on the real broker

	u, err := urlHost(s.amqpURL)
	if err != nil {
		t.Fatal(err)
	}
	px := newProxy(t, u)
	px.setDown(true)
	// Not ready without the broker, but it takes requests.
	producer := s.startUntil("producer", map[string]string{"AMQP_URL": replaceHost(s.amqpURL, px.addr())}, "/livez")
	waitFor(t, 30*time.Second, "the producer serving gRPC", func() bool {
		_, body := producer.get(t, "/readyz")
		return strings.Contains(body, "grpc: ok")
	})
	notifications, devices, admin := s.clients()
	if _, err := devices.RegisterDevice(ctxT(t), &notifyv1.RegisterDeviceRequest{
		UserId: "carol", DeviceId: "carol-phone", Token: "carol-token", Platform: notifyv1.Platform_PLATFORM_ANDROID,
	}); err != nil {
		t.Fatal(err)
	}

	resp, err := notifications.Publish(ctxT(t), &notifyv1.PublishRequest{
		Type:       "e2e.outage",
		Recipients: &notifyv1.Recipients{Target: &notifyv1.Recipients_UserIds{UserIds: &notifyv1.UserIDs{UserIds: []string{"carol"}}}},
		Content:    &notifyv1.Content{Body: "sent while RabbitMQ was unreachable"},
	})
	if err != nil {
		t.Fatalf("Publish with the broker down = %v, want accepted (it waits in the outbox)", err)
	}
	time.Sleep(time.Second)
	var waiting int
	if err := s.db.Pool.QueryRow(ctxT(t), "SELECT count(*) FROM outbox WHERE published_at IS NULL AND "+notStatusEvent).Scan(&waiting); err != nil {
		t.Fatal(err)
	}
	if waiting != 1 || s.emulatorStats(false).Requests != 0 {
		t.Fatalf("with the broker down: %d outbox rows waiting, %d FCM sends; want 1 and 0", waiting, s.emulatorStats(false).Requests)
	}

	px.setDown(false)
	n := waitFinal(t, admin, resp.GetNotificationId(), time.Minute)
	if n.GetStatus() != notifyv1.NotificationStatus_NOTIFICATION_STATUS_DELIVERED || n.GetCounts().GetDelivered() != 1 {
		t.Errorf("after the broker came back: %v %v, want DELIVERED to 1 token", n.GetStatus(), n.GetCounts())
	}
	if got := s.emulatorStats(true).Tokens["carol-token"].Received; got != 1 {
		t.Errorf("carol-token received %d times, want 1", got)
	}
}

func TestBadPublishIsRefusedWithFieldDetails(t *testing.T) {
	s := newStack(t)
	s.start("producer", nil)
	notifications, devices, _ := s.clients()
	badFields := func(call string, err error) map[string]bool {
		t.Helper()
		st := status.Convert(err)
		if st.Code() != codes.InvalidArgument {
			t.Fatalf("%s = %v, want INVALID_ARGUMENT", call, err)
		}
		fields := map[string]bool{}
		for _, d := range st.Details() {
			if br, ok := d.(*errdetails.BadRequest); ok {
				for _, v := range br.GetFieldViolations() {
					fields[v.GetField()] = true
				}
			}
		}
		return fields
	}

	_, err := notifications.Publish(ctxT(t), &notifyv1.PublishRequest{
		Type:       "e2e.bad",
		Recipients: &notifyv1.Recipients{},
		Content:    &notifyv1.Content{Title: "x"},
		Data:       map[string]string{"gcm.notification.title": "reserved"},
	})
	if fields := badFields("Publish", err); !fields["recipients"] || !fields["data[gcm.notification.title]"] {
		t.Errorf("field violations %v, want recipients and data[gcm.notification.title]", fields)
	}
	// U+0000, which PostgreSQL cannot store, is refused naming the field (not INTERNAL).
	_, err = notifications.Publish(ctxT(t), &notifyv1.PublishRequest{
		Type:       "e2e.bad",
		Recipients: &notifyv1.Recipients{Target: &notifyv1.Recipients_UserIds{UserIds: &notifyv1.UserIDs{UserIds: []string{"ana"}}}},
		Content:    &notifyv1.Content{Title: "a\x00b"},
	})
	if fields := badFields("Publish with NUL", err); !fields["content.title"] {
		t.Errorf("field violations %v, want content.title", fields)
	}
	_, err = devices.RegisterDevice(ctxT(t), &notifyv1.RegisterDeviceRequest{UserId: "ana", DeviceId: "d1", Token: "t\x00",
		Platform: notifyv1.Platform_PLATFORM_ANDROID})
	if fields := badFields("RegisterDevice with NUL", err); !fields["token"] {
		t.Errorf("field violations %v, want token", fields)
	}
	var rows int
	if err := s.db.Pool.QueryRow(ctxT(t), "SELECT (SELECT count(*) FROM notifications) + (SELECT count(*) FROM outbox WHERE "+notStatusEvent+") + (SELECT count(*) FROM devices)").Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if rows != 0 {
		t.Errorf("a refused Publish wrote %d rows", rows)
	}
}

func TestSenderStopsCleanlyOnSIGTERM(t *testing.T) {
	s := newStack(t)
	s.start("fcm-emulator", map[string]string{"FCM_EMULATOR_LATENCY": "20ms"})
	s.start("producer", nil)
	senderEnv := map[string]string{"SEND_WORKERS": "1", "SEND_CHUNK_CONCURRENCY": "2", "FCM_MAX_CONCURRENT_SENDS": "2"}
	sender := s.start("sender", senderEnv)
	notifications, devices, admin := s.clients()

	const total = 6000
	registerUsers(t, devices, "term", 600, 10)
	resp, err := notifications.Publish(ctxT(t), &notifyv1.PublishRequest{
		Type:       "e2e.sigterm",
		Recipients: &notifyv1.Recipients{Target: &notifyv1.Recipients_AllDevices{AllDevices: &notifyv1.AllDevices{}}},
		Content:    &notifyv1.Content{Title: "Shutdown"},
	})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Minute, "the broadcast to be under way", func() bool { return s.emulatorStats(false).Requests >= 1000 })

	// SIGTERM: the sender stops taking deliveries, lets its in-flight chunks finish and
	// hands the task back, and exits 0.
	start := time.Now()
	_ = sender.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-sender.done:
	case <-time.After(30 * time.Second):
		t.Fatal("sender still running 30s after SIGTERM")
	}
	if sender.err != nil {
		t.Fatalf("sender exited with %v after SIGTERM:\n%s", sender.err, sender.tail(20))
	}
	t.Logf("sender stopped %s after SIGTERM, %d sends so far", time.Since(start).Round(time.Millisecond), s.emulatorStats(false).Requests)

	s.start("sender", senderEnv)
	n := waitFinal(t, admin, resp.GetNotificationId(), 2*time.Minute)
	if n.GetCounts().GetDelivered() != total {
		t.Fatalf("counts %v, want %d delivered", n.GetCounts(), total)
	}
	// A clean stop commits what it sent: nothing is sent twice.
	if got := s.emulatorStats(false).Requests; got != total {
		t.Errorf("emulator got %d sends for %d tokens, want exactly one each after a graceful stop", got, total)
	}
}

// getJSON decodes a JSON GET response.
func getJSON(t *testing.T, url string, out any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		t.Fatalf("decode %s: %v", url, err)
	}
}
