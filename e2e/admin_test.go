package e2e

import (
	"context"
	"crypto/sha256"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	notifyv1 "notify/proto/gen/notify/v1"
)

// deadLettersOf returns the dead letters stored for a notification, newest first.
func deadLettersOf(t *testing.T, admin notifyv1.AdminServiceClient, id string) []*notifyv1.DeadLetter {
	t.Helper()
	resp, err := admin.ListDeadLetters(ctxT(t), &notifyv1.ListDeadLettersRequest{PageSize: 1000})
	if err != nil {
		t.Fatalf("ListDeadLetters: %v", err)
	}
	var out []*notifyv1.DeadLetter
	for _, d := range resp.GetDeadLetters() {
		if d.GetNotificationId() == id {
			out = append(out, d)
		}
	}
	return out
}

func replay(t *testing.T, admin notifyv1.AdminServiceClient, dryRun bool, id string) *notifyv1.ReplayResult {
	t.Helper()
	resp, err := admin.Replay(ctxT(t), &notifyv1.ReplayRequest{
		Selector: &notifyv1.ReplayRequest_NotificationIds{NotificationIds: &notifyv1.NotificationIDs{Ids: []string{id}}},
		DryRun:   dryRun,
	})
	if err != nil {
		t.Fatalf("Replay(dry run %v): %v", dryRun, err)
	}
	if len(resp.GetResults()) != 1 || resp.GetDryRun() != dryRun {
		t.Fatalf("Replay(dry run %v) = %v, want one result", dryRun, resp)
	}
	return resp.GetResults()[0]
}

// waitSettled polls GetNotification until the notification is neither pending nor
// retrying and has been replayed `replays` times.
func waitSettled(t *testing.T, admin notifyv1.AdminServiceClient, id string, replays int32) *notifyv1.Notification {
	t.Helper()
	var n *notifyv1.Notification
	waitFor(t, time.Minute, "notification "+id+" to settle", func() bool {
		resp, err := admin.GetNotification(ctxT(t), &notifyv1.GetNotificationRequest{NotificationId: id, PageSize: 1})
		if err != nil {
			t.Fatalf("GetNotification: %v", err)
		}
		n = resp.GetNotification()
		st := n.GetStatus()
		return n.GetReplayCount() == replays && st != notifyv1.NotificationStatus_NOTIFICATION_STATUS_PENDING &&
			st != notifyv1.NotificationStatus_NOTIFICATION_STATUS_RETRYING
	})
	return n
}

func TestReplayAfterFCMRecoversSendsOnlyWhatWasNotDelivered(t *testing.T) {
	s := newStack(t)
	s.start("fcm-emulator", nil)
	// Published outbox rows are kept, so the test can count what each step wrote.
	s.start("producer", map[string]string{"OUTBOX_RETENTION": "1h"})
	// One attempt per token: a transient failure is dead-lettered at once (no retrier).
	s.start("sender", map[string]string{"RETRY_MAX_ATTEMPTS": "1"})
	s.start("deadletter", nil)
	notifications, devices, admin := s.clients()

	// ana's third token fails once with INTERNAL, then is delivered.
	tokens := []string{"replay-ok-1", "replay-ok-2", "flaky1-replay-3"}
	for i, tok := range tokens {
		if _, err := devices.RegisterDevice(ctxT(t), &notifyv1.RegisterDeviceRequest{
			UserId: "ana", DeviceId: "ana-" + tok, Token: tok, Platform: notifyv1.Platform_PLATFORM_ANDROID,
		}); err != nil {
			t.Fatalf("RegisterDevice %d: %v", i, err)
		}
	}
	pub, err := notifications.Publish(ctxT(t), &notifyv1.PublishRequest{
		Type:       "e2e.replay",
		Recipients: &notifyv1.Recipients{Target: &notifyv1.Recipients_UserIds{UserIds: &notifyv1.UserIDs{UserIds: []string{"ana"}}}},
		Content:    &notifyv1.Content{Title: "Replay me"},
	})
	if err != nil {
		t.Fatal(err)
	}
	id := pub.GetNotificationId()
	n := waitSettled(t, admin, id, 0)
	if n.GetStatus() != notifyv1.NotificationStatus_NOTIFICATION_STATUS_FAILED || n.GetCounts().GetDelivered() != 2 || n.GetCounts().GetFailed() != 1 {
		t.Fatalf("first send: %v %v, want FAILED with 2 delivered and 1 failed", n.GetStatus(), n.GetCounts())
	}
	waitFor(t, 30*time.Second, "the dead letter to be stored", func() bool { return len(deadLettersOf(t, admin, id)) == 1 })

	// FCM is down now. A dry run says what a replay would send and changes nothing.
	s.emulatorConfig(map[string]any{"fail_all": "INTERNAL"})
	sentBefore := s.emulatorStats(false).Requests
	dry := replay(t, admin, true, id)
	if dry.GetOutcome() != notifyv1.ReplayOutcome_REPLAY_OUTCOME_REPLAYED || dry.GetTokenCount() != 1 {
		t.Errorf("dry run = %v, want REPLAYED with 1 token", dry)
	}
	time.Sleep(time.Second)
	n = waitSettled(t, admin, id, 0)
	if n.GetStatus() != notifyv1.NotificationStatus_NOTIFICATION_STATUS_FAILED || s.emulatorStats(false).Requests != sentBefore {
		t.Errorf("after the dry run: %v, replay count %d, emulator requests %d → %d; want nothing changed or sent",
			n.GetStatus(), n.GetReplayCount(), sentBefore, s.emulatorStats(false).Requests)
	}
	if dl := deadLettersOf(t, admin, id); dl[0].GetReplayTime() != nil {
		t.Error("the dry run marked the dead letter replayed")
	}
	var outboxRows int
	if err := s.db.Pool.QueryRow(ctxT(t), "SELECT count(*) FROM outbox WHERE notification_id = $1 AND "+notStatusEvent, id).Scan(&outboxRows); err != nil || outboxRows != 1 {
		t.Errorf("outbox rows after the dry run: %d (%v), want only the publish's", outboxRows, err)
	}

	// Replayed while FCM is still down: only the failed token is sent, and fails again.
	if r := replay(t, admin, false, id); r.GetOutcome() != notifyv1.ReplayOutcome_REPLAY_OUTCOME_REPLAYED || r.GetTokenCount() != 1 {
		t.Fatalf("replay during the outage = %v, want REPLAYED with 1 token", r)
	}
	n = waitSettled(t, admin, id, 1)
	if n.GetStatus() != notifyv1.NotificationStatus_NOTIFICATION_STATUS_FAILED {
		t.Fatalf("after replaying during the outage: %v %v, want FAILED", n.GetStatus(), n.GetCounts())
	}
	waitFor(t, 30*time.Second, "the second dead letter", func() bool { return len(deadLettersOf(t, admin, id)) == 2 })

	// FCM is back: the replay delivers the last token and nothing else.
	s.emulatorConfig(map[string]any{"fail_all": ""})
	if r := replay(t, admin, false, id); r.GetOutcome() != notifyv1.ReplayOutcome_REPLAY_OUTCOME_REPLAYED || r.GetTokenCount() != 1 {
		t.Fatalf("replay after recovery = %v, want REPLAYED with 1 token", r)
	}
	n = waitSettled(t, admin, id, 2)
	c := n.GetCounts()
	if n.GetStatus() != notifyv1.NotificationStatus_NOTIFICATION_STATUS_DELIVERED || c.GetDelivered() != 3 || c.GetFailed() != 0 || c.GetTotal() != 3 {
		t.Fatalf("after replaying after recovery: %v %v, want DELIVERED with 3 of 3 delivered", n.GetStatus(), c)
	}
	st := s.emulatorStats(true)
	// The token counts per token are exactly what each replay reported it would send.
	for tok, want := range map[string]int64{"replay-ok-1": 1, "replay-ok-2": 1, "flaky1-replay-3": 3} {
		if got := st.Tokens[tok].Received; got != want {
			t.Errorf("emulator received %s %d times, want %d", tok, got, want)
		}
	}

	// A second replay in a row finds nothing to send, and sends nothing.
	sentBefore = s.emulatorStats(false).Requests
	if r := replay(t, admin, false, id); r.GetOutcome() != notifyv1.ReplayOutcome_REPLAY_OUTCOME_SKIPPED_DELIVERED || r.GetTokenCount() != 0 {
		t.Errorf("replay of a delivered notification = %v, want SKIPPED_DELIVERED", r)
	}
	time.Sleep(time.Second)
	if got := s.emulatorStats(false).Requests; got != sentBefore {
		t.Errorf("the second replay sent %d requests, want none", got-sentBefore)
	}

	// Who replayed what is on record.
	for _, d := range deadLettersOf(t, admin, id) {
		if d.GetReplayTime() == nil || d.GetReplayedBy() != "e2e-admin" {
			t.Errorf("dead letter %d: replayed at %v by %q, want by e2e-admin", d.GetId(), d.GetReplayTime(), d.GetReplayedBy())
		}
	}
	var replays int
	if err := s.db.Pool.QueryRow(ctxT(t), "SELECT count(*) FROM replays WHERE notification_id = $1 AND replayed_by = 'e2e-admin' AND token_count = 1",
		id).Scan(&replays); err != nil || replays != 2 {
		t.Errorf("replays rows: %d (%v), want 2", replays, err)
	}
}

// dial returns clients of a producer that send secret as their API key ("" for none).
func dial(t *testing.T, addr, secret string) (notifyv1.NotificationServiceClient, notifyv1.DeviceServiceClient, notifyv1.AdminServiceClient, healthpb.HealthClient) {
	t.Helper()
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	if secret != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(bearerKey(secret)))
	}
	conn, err := grpc.NewClient(addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return notifyv1.NewNotificationServiceClient(conn), notifyv1.NewDeviceServiceClient(conn), notifyv1.NewAdminServiceClient(conn), healthpb.NewHealthClient(conn)
}

func TestAPIKeysAuthenticateAndAuthorize(t *testing.T) {
	s := newStack(t)
	s.start("producer", map[string]string{"API_KEY_CACHE_TTL": "1s"})
	// A second replica: a revocation reaches it when its key cache expires.
	replica2 := freeAddr(t)
	s.start("producer", map[string]string{"API_KEY_CACHE_TTL": "1s", "GRPC_ADDR": replica2})
	_, _, admin := s.clients()

	newKey := func(name string, role notifyv1.Role) string {
		t.Helper()
		resp, err := admin.CreateAPIKey(ctxT(t), &notifyv1.CreateAPIKeyRequest{Name: name, Role: role})
		if err != nil {
			t.Fatalf("CreateAPIKey %s: %v", name, err)
		}
		return resp.GetSecret()
	}
	ordersKey := newKey("orders", notifyv1.Role_ROLE_PUBLISHER)
	billingKey := newKey("billing", notifyv1.Role_ROLE_PUBLISHER)

	req := &notifyv1.PublishRequest{
		IdempotencyKey: "invoice-7",
		Type:           "e2e.auth",
		Recipients:     &notifyv1.Recipients{Target: &notifyv1.Recipients_Tokens{Tokens: &notifyv1.Tokens{Tokens: []string{"t1"}}}},
		Content:        &notifyv1.Content{Title: "hi"},
	}
	orders, ordersDevices, ordersAdmin, _ := dial(t, s.grpcAddr, ordersKey)
	billing, _, _, _ := dial(t, s.grpcAddr, billingKey)
	orders2, _, _, _ := dial(t, replica2, ordersKey)

	// Publishers are told apart: each is the caller of what it publishes, and the same
	// idempotency key is each one's own.
	fromOrders, err := orders.Publish(ctxT(t), req)
	if err != nil {
		t.Fatalf("Publish with a publisher key: %v", err)
	}
	fromBilling, err := billing.Publish(ctxT(t), req)
	if err != nil {
		t.Fatalf("Publish with another publisher key: %v", err)
	}
	if fromBilling.GetDuplicate() || fromBilling.GetNotificationId() == fromOrders.GetNotificationId() {
		t.Errorf("the same idempotency key from two publishers: %v and %v, want two notifications", fromOrders, fromBilling)
	}
	got, err := admin.GetNotification(ctxT(t), &notifyv1.GetNotificationRequest{NotificationId: fromOrders.GetNotificationId()})
	if err != nil || got.GetNotification().GetCaller() != "orders" {
		t.Errorf("caller of the notification = %q (%v), want orders", got.GetNotification().GetCaller(), err)
	}
	if _, err := ordersDevices.CheckDevice(ctxT(t), &notifyv1.CheckDeviceRequest{UserId: "u", DeviceId: "d"}); err != nil {
		t.Errorf("DeviceService with a publisher key: %v", err)
	}
	if _, err := orders2.Publish(ctxT(t), req); err != nil { // replica 2 caches the key now
		t.Errorf("Publish on replica 2: %v", err)
	}

	// A publisher key cannot call AdminService.
	adminCalls := map[string]func() error{
		"GetNotification": func() error {
			_, err := ordersAdmin.GetNotification(ctxT(t), &notifyv1.GetNotificationRequest{NotificationId: fromOrders.GetNotificationId()})
			return err
		},
		"ListNotifications": func() error {
			_, err := ordersAdmin.ListNotifications(ctxT(t), &notifyv1.ListNotificationsRequest{})
			return err
		},
		"Replay": func() error {
			_, err := ordersAdmin.Replay(ctxT(t), &notifyv1.ReplayRequest{Selector: &notifyv1.ReplayRequest_NotificationIds{
				NotificationIds: &notifyv1.NotificationIDs{Ids: []string{fromOrders.GetNotificationId()}}}})
			return err
		},
		"CreateAPIKey": func() error {
			_, err := ordersAdmin.CreateAPIKey(ctxT(t), &notifyv1.CreateAPIKeyRequest{Name: "escalate", Role: notifyv1.Role_ROLE_ADMIN})
			return err
		},
	}
	for name, call := range adminCalls {
		if err := call(); status.Code(err) != codes.PermissionDenied {
			t.Errorf("%s with a publisher key: %v, want PermissionDenied", name, err)
		}
	}

	// No key, a wrong key: refused alike. Health checks need no key.
	anonymous, _, _, health := dial(t, s.grpcAddr, "")
	guessed, _, _, _ := dial(t, s.grpcAddr, "nfy_"+randomHex(32)[:43])
	garbage, _, _, _ := dial(t, s.grpcAddr, "hunter2")
	for name, c := range map[string]notifyv1.NotificationServiceClient{"no key": anonymous, "unknown key": guessed, "garbage key": garbage} {
		if _, err := c.Publish(ctxT(t), req); status.Code(err) != codes.Unauthenticated {
			t.Errorf("Publish with %s: %v, want Unauthenticated", name, err)
		}
	}
	// The gRPC health status follows the readiness checks once a second, so it may still
	// say NOT_SERVING for a moment after /readyz first answered 200.
	var healthResp *healthpb.HealthCheckResponse
	var healthErr error
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		healthResp, healthErr = health.Check(ctxT(t), &healthpb.HealthCheckRequest{})
		if healthErr != nil || healthResp.GetStatus() == healthpb.HealthCheckResponse_SERVING || time.Now().After(deadline) {
			break
		}
	}
	if healthErr != nil || healthResp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health check without a key = %v, %v; want SERVING", healthResp, healthErr)
	}

	// Revoked: refused at once by the replica that revoked it, by the other within its
	// cache TTL.
	if resp, err := admin.RevokeAPIKey(ctxT(t), &notifyv1.RevokeAPIKeyRequest{Name: "orders"}); err != nil || !resp.GetRevoked() {
		t.Fatalf("RevokeAPIKey = %v, %v", resp, err)
	}
	if _, err := orders.Publish(ctxT(t), req); status.Code(err) != codes.Unauthenticated {
		t.Errorf("Publish with a revoked key: %v, want Unauthenticated", err)
	}
	waitFor(t, 10*time.Second, "replica 2 to refuse the revoked key", func() bool {
		_, err := orders2.Publish(ctxT(t), req)
		return status.Code(err) == codes.Unauthenticated
	})
	if _, err := billing.Publish(ctxT(t), req); err != nil {
		t.Errorf("another publisher after a revocation: %v", err)
	}

	// The database holds hashes, never the secrets.
	for _, secret := range []string{s.adminKey, ordersKey, billingKey} {
		var plain, hashed int
		h := sha256.Sum256([]byte(secret))
		err := s.db.Pool.QueryRow(context.Background(), `SELECT
			(SELECT count(*) FROM api_keys k WHERE k::text LIKE '%' || $1 || '%'),
			(SELECT count(*) FROM api_keys WHERE secret_hash = $2)`, secret, h[:]).Scan(&plain, &hashed)
		if err != nil {
			t.Fatal(err)
		}
		if plain != 0 || hashed != 1 {
			t.Errorf("api_keys: %d rows contain a secret in plain text, %d hold its SHA-256; want 0 and 1", plain, hashed)
		}
	}
}
