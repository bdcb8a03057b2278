package server

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"notify/pkg/pgtest"
	notifyv1 "notify/proto/gen/notify/v1"
	"notify/services/producer/internal/apikey"
)

// fakeClock is a time that moves only when told to, so that no bucket refills while a
// slow machine makes the calls.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// TestRateLimitPerKey serves the producer's API as run wires it (the real Auth with API
// keys in PostgreSQL, the rate limit, the handlers) over gRPC, and checks that one noisy
// key is limited while another key is not, that a refusal says when to retry and writes
// nothing, and how roles, a key's own limit and devices count.
func TestRateLimitPerKey(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := t.Context()
	store := apikey.NewStore(db.Pool)
	secrets := map[string]string{}
	for _, k := range []struct {
		name  string
		role  apikey.Role
		limit apikey.Limit
	}{
		{"noisy", apikey.RolePublisher, apikey.Limit{}},
		{"quiet", apikey.RolePublisher, apikey.Limit{}},
		{"ops", apikey.RoleAdmin, apikey.Limit{}},
		{"unlimited", apikey.RolePublisher, apikey.Limit{PerSecond: ptr(0)}},
		{"small", apikey.RolePublisher, apikey.Limit{Burst: ptr(2)}},
		{"devices", apikey.RolePublisher, apikey.Limit{}},
		{"batch", apikey.RolePublisher, apikey.Limit{}},
	} {
		_, secret, err := store.CreateWith(ctx, k.name, k.role, apikey.Options{Limit: k.limit})
		if err != nil {
			t.Fatal(err)
		}
		secrets[k.name] = secret
	}

	const perSecond, burst = 10, 5
	clock := &fakeClock{now: time.Now()}
	reg := prometheus.NewRegistry()
	limits := NewRateLimit(Limits{PerKey: perSecond, PerAdminKey: 0, Burst: burst}, reg)
	limits.now = clock.Now
	auth := NewAuth(apikey.NewVerifier(store, time.Minute, discard), discard, reg)
	s := grpc.NewServer(append([]grpc.ServerOption{grpc.ChainUnaryInterceptor(auth.Unary(), limits.Unary())}, TextOptions()...)...)
	notifyv1.RegisterNotificationServiceServer(s, NewNotifications(db.Pool, discard, prometheus.NewRegistry(), nil, GroupCommit{}))
	notifyv1.RegisterDeviceServiceServer(s, NewDevices(db.Pool, discard, prometheus.NewRegistry()))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = s.Serve(lis) }()
	t.Cleanup(s.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	pub, dev := notifyv1.NewNotificationServiceClient(conn), notifyv1.NewDeviceServiceClient(conn)
	as := func(key string) context.Context {
		return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+secrets[key])
	}
	publish := func(key string, i int) error {
		req := validRequest()
		req.Type = "rate." + key
		req.IdempotencyKey = key + "-" + string(rune('a'+i))
		_, err := pub.Publish(as(key), req)
		return err
	}
	published := func(key string) int {
		var n int
		if err := db.Pool.QueryRow(ctx, "SELECT count(*) FROM notifications WHERE type = $1", "rate."+key).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	// The noisy key spends its burst, then is refused with RESOURCE_EXHAUSTED saying when
	// to come back; the refused calls write nothing.
	for i := range burst {
		if err := publish("noisy", i); err != nil {
			t.Fatalf("noisy call %d within the burst: %v", i, err)
		}
	}
	for i := burst; i < burst+3; i++ {
		err := publish("noisy", i)
		if status.Code(err) != codes.ResourceExhausted {
			t.Fatalf("noisy call %d beyond the burst: %v, want RESOURCE_EXHAUSTED", i, err)
		}
		retry := retryDelayOf(err)
		if want := time.Second / perSecond; retry < want || retry > 2*want {
			t.Errorf("noisy call %d: RetryInfo %s, want about %s (one token at %d/s)", i, retry, want, perSecond)
		}
		if !hasQuotaFailure(err, "api_key:noisy") {
			t.Errorf("noisy call %d: no QuotaFailure naming the key: %v", i, status.Convert(err).Details())
		}
	}
	var trailer metadata.MD
	req := validRequest()
	_, err = pub.Publish(as("noisy"), req, grpc.Trailer(&trailer))
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("noisy call beyond the burst: %v", err)
	}
	if got, want := trailer.Get("grpc-retry-pushback-ms"), fmt.Sprint(retryDelayOf(err).Milliseconds()); len(got) != 1 || got[0] != want {
		t.Errorf("grpc-retry-pushback-ms trailer = %q, want [%s] (the RetryInfo delay)", got, want)
	}
	if n := published("noisy"); n != burst {
		t.Errorf("%d notifications of the noisy key, want %d (refused calls write nothing)", n, burst)
	}
	if got := testutil.ToFloat64(limits.refused.WithLabelValues("noisy")); got != 4 {
		t.Errorf("notify_rate_limited_total{key=noisy} = %v, want 4", got)
	}

	// Meanwhile the other key is not limited by the noisy one.
	for i := range burst {
		if err := publish("quiet", i); err != nil {
			t.Fatalf("quiet call %d while the noisy key is limited: %v", i, err)
		}
	}

	// A client that waits for the RetryInfo delay gets through: one token per 1/rate.
	clock.Advance(time.Second / perSecond)
	if err := publish("noisy", 10); err != nil {
		t.Errorf("noisy call after waiting the retry delay: %v", err)
	}
	if err := publish("noisy", 11); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("second noisy call after one token refilled: %v, want RESOURCE_EXHAUSTED", err)
	}

	// Admin keys are unlimited by default (PUBLISH_RATE_PER_ADMIN_KEY=0), and so is a key
	// whose own rate is 0; a key's own burst replaces the default.
	for _, key := range []string{"ops", "unlimited"} {
		for i := range 3 * burst {
			if err := publish(key, i); err != nil {
				t.Fatalf("%s call %d: %v, want no limit", key, i, err)
			}
		}
	}
	for i, want := range []codes.Code{codes.OK, codes.OK, codes.ResourceExhausted} {
		if err := publish("small", i); status.Code(err) != want {
			t.Errorf("small call %d: %v, want %s (its own burst is 2)", i, err, want)
		}
	}

	// A PublishBatch costs one per item: a batch of 3 fits the burst of 5, a second does
	// not and writes none of its items.
	batchOf := func(from int) *notifyv1.PublishBatchRequest {
		b := &notifyv1.PublishBatchRequest{}
		for i := from; i < from+3; i++ {
			r := validRequest()
			r.Type, r.IdempotencyKey = "rate.batch", fmt.Sprintf("batch-%d", i)
			b.Requests = append(b.Requests, r)
		}
		return b
	}
	if _, err := pub.PublishBatch(as("batch"), batchOf(0)); err != nil {
		t.Fatalf("batch of 3 within the burst of %d: %v", burst, err)
	}
	if _, err := pub.PublishBatch(as("batch"), batchOf(3)); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("second batch of 3 (2 tokens left): %v, want RESOURCE_EXHAUSTED", err)
	}
	if n := published("batch"); n != 3 {
		t.Errorf("%d notifications from the batches, want 3 (the refused batch writes nothing)", n)
	}

	// DeviceService calls cost 1 each, whatever the number of devices in them.
	batch := &notifyv1.RegisterDevicesRequest{}
	for i := range 3 * burst {
		batch.Devices = append(batch.Devices, &notifyv1.Device{UserId: "u", DeviceId: "d" + string(rune('a'+i)),
			Token: "tok-" + string(rune('a'+i)), Platform: notifyv1.Platform_PLATFORM_ANDROID})
	}
	for i := range burst {
		if _, err := dev.RegisterDevices(as("devices"), batch); err != nil {
			t.Fatalf("RegisterDevices call %d of %d devices within the burst: %v", i, len(batch.Devices), err)
		}
	}
	if _, err := dev.CheckDevice(as("devices"), &notifyv1.CheckDeviceRequest{UserId: "u", DeviceId: "da"}); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("device call beyond the burst: %v, want RESOURCE_EXHAUSTED", err)
	}
}

func hasQuotaFailure(err error, subject string) bool {
	for _, d := range status.Convert(err).Details() {
		if qf, ok := d.(*errdetails.QuotaFailure); ok {
			for _, v := range qf.GetViolations() {
				if v.GetSubject() == subject {
					return true
				}
			}
		}
	}
	return false
}

// TestRateLimitCost: NotificationService calls cost one per item of a list of messages
// they carry (a batch), at least 1; other services' calls cost 1.
func TestRateLimitCost(t *testing.T) {
	t.Parallel()
	items := func(n int) proto.Message {
		r := &notifyv1.PublishBatchRequest{}
		for range n {
			r.Requests = append(r.Requests, validRequest())
		}
		return r
	}
	devices := &notifyv1.RegisterDevicesRequest{Devices: []*notifyv1.Device{{}, {}, {}, {}, {}, {}, {}}}
	tests := []struct {
		method string
		req    any
		want   int
	}{
		{"/notify.v1.NotificationService/Publish", validRequest(), 1},
		{"/notify.v1.NotificationService/PublishBatch", items(0), 1},
		{"/notify.v1.NotificationService/PublishBatch", items(7), 7},
		{"/notify.v1.DeviceService/RegisterDevices", devices, 1},
		{"/notify.v1.DeviceService/RegisterDevice", &notifyv1.RegisterDeviceRequest{}, 1},
	}
	for _, tt := range tests {
		if got := cost(tt.method, tt.req); got != tt.want {
			t.Errorf("cost(%s, %T) = %d, want %d", tt.method, tt.req, got, tt.want)
		}
	}
}

// TestCreateAPIKeyWithItsOwnLimit: CreateAPIKey stores a key's own rate and burst, the key
// lists with them, the verifier hands them to the rate limit, and out-of-bounds values are
// INVALID_ARGUMENT naming the fields.
func TestCreateAPIKeyWithItsOwnLimit(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	admin := NewAdmin(db.Pool, discard, nil, nil)
	created, err := admin.CreateAPIKey(t.Context(), &notifyv1.CreateAPIKeyRequest{Name: "bulk", Role: notifyv1.Role_ROLE_PUBLISHER,
		PublishRate: proto.Int32(0), PublishBurst: proto.Int32(7)})
	if err != nil {
		t.Fatal(err)
	}
	plain, err := admin.CreateAPIKey(t.Context(), &notifyv1.CreateAPIKeyRequest{Name: "plain", Role: notifyv1.Role_ROLE_PUBLISHER})
	if err != nil {
		t.Fatal(err)
	}
	listed, err := admin.ListAPIKeys(t.Context(), &notifyv1.ListAPIKeysRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range listed.GetKeys() {
		switch k.GetName() {
		case "bulk":
			if k.PublishRate == nil || k.GetPublishRate() != 0 || k.GetPublishBurst() != 7 {
				t.Errorf("listed bulk = %v, want its own rate 0 and burst 7", k)
			}
		case "plain":
			if k.PublishRate != nil || k.PublishBurst != nil {
				t.Errorf("listed plain = %v, want no limit of its own", k)
			}
		}
	}

	v := apikey.NewVerifier(apikey.NewStore(db.Pool), 0, discard)
	limits := NewRateLimit(Limits{PerKey: 10, Burst: 5}, prometheus.NewRegistry())
	for secret, want := range map[string][3]any{created.GetSecret(): {"bulk", 0, 7}, plain.GetSecret(): {"plain", 10, 5}} {
		k, err := v.Verify(t.Context(), secret)
		if err != nil {
			t.Fatal(err)
		}
		name, rate, burst := limits.limitOf(withKey(t.Context(), k))
		if got := [3]any{name, rate, burst}; got != want {
			t.Errorf("limit of %s = %v, want %v", k.Name, got, want)
		}
	}

	_, err = admin.CreateAPIKey(t.Context(), &notifyv1.CreateAPIKeyRequest{Name: "bad", Role: notifyv1.Role_ROLE_PUBLISHER,
		PublishRate: proto.Int32(-1), PublishBurst: proto.Int32(0)})
	if diff := cmp.Diff([]string{"publish_rate", "publish_burst"}, badFields(t, err)); diff != "" {
		t.Errorf("fields (-want +got):\n%s", diff)
	}
}

// TestRateLimitBatchOverBurst: a PublishBatch bigger than the burst passes on a full bucket
// and is charged in full, so the key's next calls wait until the debt is refilled and
// batch after batch the key publishes at its rate; a refused batch takes nothing.
func TestRateLimitBatchOverBurst(t *testing.T) {
	t.Parallel()
	const perSecond, burst, items = 2, 3, 100
	clock := &fakeClock{now: time.Now()}
	limits := NewRateLimit(Limits{PerKey: perSecond, Burst: burst}, prometheus.NewRegistry())
	limits.now = clock.Now
	ctx := WithCaller(t.Context(), "bulk")
	const publishBatch, publish = "/notify.v1.NotificationService/PublishBatch", "/notify.v1.NotificationService/Publish"
	batch := &notifyv1.PublishBatchRequest{}
	for range items {
		batch.Requests = append(batch.Requests, validRequest())
	}
	tokens := func() float64 { return limits.buckets["bulk"].lim.TokensAt(clock.Now()) }
	seconds := func(tokens float64) time.Duration { return time.Duration(tokens / perSecond * float64(time.Second)) }

	if _, err := limits.take(ctx, publishBatch, batch); err != nil {
		t.Fatalf("batch of %d on a full bucket of %d: %v, want it through", items, burst, err)
	}
	if got, want := tokens(), float64(burst-items); got != want {
		t.Errorf("tokens after the batch = %v, want %v (charged in full)", got, want)
	}
	// The next call, even of cost 1, waits for the debt and its own token.
	_, err := limits.take(ctx, publish, validRequest())
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("Publish right after the batch: %v, want RESOURCE_EXHAUSTED", err)
	}
	if got, low, high := retryDelayOf(err), seconds(items-burst), seconds(items-burst+1)+time.Millisecond; got < low || got > high {
		t.Errorf("RetryInfo after the batch = %s, want between %s and %s (the debt of %d at %d/s)", got, low, high, items-burst, perSecond)
	}

	// A batch refused (the bucket is not full) takes nothing, and says when the bucket is
	// full again.
	clock.Advance(1600 * time.Millisecond)
	before := tokens()
	_, err = limits.take(ctx, publishBatch, batch)
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("batch 1.6 s after the first: %v, want RESOURCE_EXHAUSTED", err)
	}
	if got := tokens(); got != before {
		t.Errorf("tokens after a refused batch = %v, want %v as before it", got, before)
	}
	if got, low := retryDelayOf(err), seconds(burst-before); got < low || got > low+2*time.Millisecond {
		t.Errorf("RetryInfo of the refused batch = %s, want about %s (until the bucket is full)", got, low)
	}

	// A client that sends batch after batch and waits each RetryInfo publishes at the rate.
	clock.Advance(time.Hour) // a full bucket
	start, sent := clock.Now(), 0
	for sent < 10*items {
		_, err := limits.take(ctx, publishBatch, batch)
		switch status.Code(err) {
		case codes.OK:
			sent += items
		case codes.ResourceExhausted:
			clock.Advance(retryDelayOf(err))
		default:
			t.Fatal(err)
		}
	}
	// The first batch passes at once on the full bucket; the other 9 wait for their items.
	elapsed := clock.Now().Sub(start)
	if low, high := seconds(9*items), seconds(9*items)+100*time.Millisecond; elapsed < low || elapsed > high {
		t.Errorf("10 batches of %d took %s, want between %s and %s (%d/s)", items, elapsed, low, high, perSecond)
	}
}
