package server

import (
	"bytes"
	"context"
	"encoding/base64"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	"notify/pkg/pgtest"
	notifyv1 "notify/proto/gen/notify/v1"
)

// api is the producer's three services served over gRPC on pool, wired as run wires
// them except for authentication: every call is the caller "orders".
type api struct {
	conn  *grpc.ClientConn
	pub   notifyv1.NotificationServiceClient
	dev   notifyv1.DeviceServiceClient
	admin notifyv1.AdminServiceClient
}

func serveAPI(t *testing.T, pool *pgxpool.Pool) *api {
	t.Helper()
	asCaller := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		return h(WithCaller(ctx, "orders"), req)
	}
	s := grpc.NewServer(append([]grpc.ServerOption{grpc.ChainUnaryInterceptor(asCaller)}, TextOptions()...)...)
	notifyv1.RegisterNotificationServiceServer(s, NewNotifications(pool, discard, prometheus.NewRegistry(), nil, GroupCommit{}))
	notifyv1.RegisterDeviceServiceServer(s, NewDevices(pool, discard, prometheus.NewRegistry()))
	notifyv1.RegisterAdminServiceServer(s, NewAdmin(pool, discard, nil, nil))
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
	return &api{conn: conn, pub: notifyv1.NewNotificationServiceClient(conn), dev: notifyv1.NewDeviceServiceClient(conn),
		admin: notifyv1.NewAdminServiceClient(conn)}
}

// TestNULIsRefusedInEveryStringField: U+0000 in any string of any RPC is INVALID_ARGUMENT
// naming the field, and nothing is written.
func TestNULIsRefusedInEveryStringField(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	a := serveAPI(t, db.Pool)
	const nul = "a\x00b"

	publish := func(modify func(*notifyv1.PublishRequest)) func(context.Context) error {
		return func(ctx context.Context) error {
			req := validRequest()
			req.IdempotencyKey = "k"
			req.Data = map[string]string{"k": "v"}
			req.Options = &notifyv1.Options{CollapseKey: "c"}
			modify(req)
			_, err := a.pub.Publish(ctx, req)
			return err
		}
	}
	device := func(modify func(*notifyv1.Device)) *notifyv1.Device {
		d := &notifyv1.Device{UserId: "u1", DeviceId: "d1", Token: "tok-1", Platform: notifyv1.Platform_PLATFORM_ANDROID}
		modify(d)
		return d
	}
	register := func(modify func(*notifyv1.Device)) func(context.Context) error {
		return func(ctx context.Context) error {
			d := device(modify)
			_, err := a.dev.RegisterDevice(ctx, &notifyv1.RegisterDeviceRequest{UserId: d.UserId, DeviceId: d.DeviceId, Token: d.Token, Platform: d.Platform})
			return err
		}
	}
	tests := []struct {
		name string
		call func(context.Context) error
		want []string
	}{
		{"publish title", publish(func(r *notifyv1.PublishRequest) { r.Content.Title = nul }), []string{"content.title"}},
		{"publish body", publish(func(r *notifyv1.PublishRequest) { r.Content.Body = nul }), []string{"content.body"}},
		{"publish image url", publish(func(r *notifyv1.PublishRequest) { r.Content.ImageUrl = "https://x/" + nul }), []string{"content.image_url"}},
		{"publish data key", publish(func(r *notifyv1.PublishRequest) { r.Data[nul] = "v" }), []string{"data"}},
		{"publish data value", publish(func(r *notifyv1.PublishRequest) { r.Data["k"] = nul }), []string{"data[k]"}},
		{"publish type", publish(func(r *notifyv1.PublishRequest) { r.Type = nul }), []string{"type"}},
		{"publish idempotency key", publish(func(r *notifyv1.PublishRequest) { r.IdempotencyKey = nul }), []string{"idempotency_key"}},
		{"publish user id", publish(func(r *notifyv1.PublishRequest) {
			r.Recipients = toUsers("u1", nul)
		}), []string{"recipients.user_ids.user_ids[1]"}},
		{"publish token", publish(func(r *notifyv1.PublishRequest) { r.Recipients = toTokens(nul) }), []string{"recipients.tokens.tokens[0]"}},
		{"publish collapse key", publish(func(r *notifyv1.PublishRequest) { r.Options.CollapseKey = nul }), []string{"options.collapse_key"}},
		{"publish several", publish(func(r *notifyv1.PublishRequest) { r.Content.Title, r.Content.Body = nul, nul }),
			[]string{"content.title", "content.body"}},
		{"register user id", register(func(d *notifyv1.Device) { d.UserId = nul }), []string{"user_id"}},
		{"register device id", register(func(d *notifyv1.Device) { d.DeviceId = nul }), []string{"device_id"}},
		{"register token", register(func(d *notifyv1.Device) { d.Token = nul }), []string{"token"}},
		{"register devices", func(ctx context.Context) error {
			_, err := a.dev.RegisterDevices(ctx, &notifyv1.RegisterDevicesRequest{Devices: []*notifyv1.Device{
				device(func(*notifyv1.Device) {}), device(func(d *notifyv1.Device) { d.DeviceId, d.Token = "d2", nul })}})
			return err
		}, []string{"devices[1].token"}},
		{"unregister device", func(ctx context.Context) error {
			_, err := a.dev.UnregisterDevice(ctx, &notifyv1.UnregisterDeviceRequest{DeviceId: nul})
			return err
		}, []string{"device_id"}},
		{"check device", func(ctx context.Context) error {
			_, err := a.dev.CheckDevice(ctx, &notifyv1.CheckDeviceRequest{UserId: nul, DeviceId: "d1"})
			return err
		}, []string{"user_id"}},
		{"get notification", func(ctx context.Context) error {
			_, err := a.admin.GetNotification(ctx, &notifyv1.GetNotificationRequest{NotificationId: nul, PageToken: nul})
			return err
		}, []string{"notification_id", "page_token"}},
		{"list notifications filter", func(ctx context.Context) error {
			_, err := a.admin.ListNotifications(ctx, &notifyv1.ListNotificationsRequest{Type: nul})
			return err
		}, []string{"type"}},
		{"list dead letters filter", func(ctx context.Context) error {
			_, err := a.admin.ListDeadLetters(ctx, &notifyv1.ListDeadLettersRequest{Filter: &notifyv1.DeadLetterFilter{Reason: nul}})
			return err
		}, []string{"filter.reason"}},
		{"replay filter", func(ctx context.Context) error {
			_, err := a.admin.Replay(ctx, &notifyv1.ReplayRequest{Selector: &notifyv1.ReplayRequest_DeadLetters{
				DeadLetters: &notifyv1.DeadLetterFilter{Reason: nul}}})
			return err
		}, []string{"dead_letters.reason"}},
		{"replay ids", func(ctx context.Context) error {
			_, err := a.admin.Replay(ctx, replayIDs(false, false, nul))
			return err
		}, []string{"notification_ids.ids[0]"}},
		{"create api key", func(ctx context.Context) error {
			_, err := a.admin.CreateAPIKey(ctx, &notifyv1.CreateAPIKeyRequest{Name: nul, Role: notifyv1.Role_ROLE_PUBLISHER})
			return err
		}, []string{"name"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if diff := cmp.Diff(tt.want, badFields(t, tt.call(ctx)), cmpSorted); diff != "" {
				t.Errorf("fields (-want +got):\n%s", diff)
			}
		})
	}
	t.Cleanup(func() { nothingWritten(t, db.Pool) })
}

// nothingWritten fails the test if any table a refused request could have written has a
// row.
func nothingWritten(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	for _, table := range []string{"notifications", "outbox", "devices", "replays", "api_keys"} {
		var n int
		if err := pool.QueryRow(context.Background(), "SELECT count(*) FROM "+table).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 0 {
			t.Errorf("%s has %d rows after refused requests, want 0", table, n)
		}
	}
}

// rawCodec sends pre-encoded request bytes as they are, so a test can send what a Go
// client refuses to encode (strings that are not UTF-8).
type rawCodec struct{ encoding.CodecV2 }

func (c rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	if b, ok := v.(rawMessage); ok {
		return mem.BufferSlice{mem.SliceBuffer(b)}, nil
	}
	return c.CodecV2.Marshal(v)
}

type rawMessage []byte

// TestInvalidUTF8IsRefusedNamingTheField: bytes that are not UTF-8 in a string field are
// INVALID_ARGUMENT naming the field (grpc-go alone answers INTERNAL before any handler),
// and nothing is written.
func TestInvalidUTF8IsRefusedNamingTheField(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	a := serveAPI(t, db.Pool)
	codec := rawCodec{encoding.GetCodecV2("proto")}

	// Encode valid requests with placeholders, then swap the placeholders' bytes for bytes
	// that are not UTF-8 (same length, so every length prefix stays right).
	const mark, bad = "@@MARK@@", "ok\xff\xfe\xc3(xy"
	encode := func(m proto.Message) rawMessage {
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(b, []byte(mark)) || len(mark) != len(bad) {
			t.Fatal("the placeholder is not in the encoded request or not as long as its replacement")
		}
		return bytes.ReplaceAll(b, []byte(mark), []byte(bad))
	}
	withMark := func(modify func(*notifyv1.PublishRequest)) rawMessage {
		req := validRequest()
		modify(req)
		return encode(req)
	}
	tests := []struct {
		name   string
		method string
		req    rawMessage
		want   []string
	}{
		{"title", "/notify.v1.NotificationService/Publish", withMark(func(r *notifyv1.PublishRequest) { r.Content.Title = mark }),
			[]string{"content.title"}},
		{"user id", "/notify.v1.NotificationService/Publish", withMark(func(r *notifyv1.PublishRequest) {
			r.Recipients = toUsers("u1", mark)
		}), []string{"recipients.user_ids.user_ids[1]"}},
		{"data value", "/notify.v1.NotificationService/Publish", withMark(func(r *notifyv1.PublishRequest) {
			r.Data = map[string]string{"k": mark}
		}), []string{"data[k]"}},
		{"data key", "/notify.v1.NotificationService/Publish", withMark(func(r *notifyv1.PublishRequest) {
			r.Data = map[string]string{mark: "v"}
		}), []string{"data"}},
		{"device token", "/notify.v1.DeviceService/RegisterDevice", encode(&notifyv1.RegisterDeviceRequest{
			UserId: "u1", DeviceId: "d1", Token: mark, Platform: notifyv1.Platform_PLATFORM_IOS}), []string{"token"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			err := a.conn.Invoke(ctx, tt.method, tt.req, new(notifyv1.PublishResponse), grpc.ForceCodecV2(codec))
			if diff := cmp.Diff(tt.want, badFields(t, err)); diff != "" {
				t.Errorf("fields (-want +got):\n%s", diff)
			}
		})
	}
	t.Cleanup(func() { nothingWritten(t, db.Pool) })
}

// TestPageTokenDecodingToBadTextIsRefused: a page token is checked as text like every
// other string, but what it decodes to reaches PostgreSQL too. A token that decodes to
// bytes PostgreSQL cannot compare against (NUL, not UTF-8; found with grpcurl as a 200,000
// character token) is INVALID_ARGUMENT naming page_token, never INTERNAL.
func TestPageTokenDecodingToBadTextIsRefused(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	a := serveAPI(t, db.Pool)
	id := publishOne(t, a)
	token := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
	for _, tt := range []struct {
		name string
		call func(context.Context) error
	}{
		{"deliveries page, NUL", func(ctx context.Context) error {
			_, err := a.admin.GetNotification(ctx, &notifyv1.GetNotificationRequest{NotificationId: id, PageToken: token("a\x00")})
			return err
		}},
		{"deliveries page, not UTF-8", func(ctx context.Context) error {
			_, err := a.admin.GetNotification(ctx, &notifyv1.GetNotificationRequest{NotificationId: id, PageToken: strings.Repeat("x", 200_000)})
			return err
		}},
		{"devices page, NUL in the device id", func(ctx context.Context) error {
			_, err := a.dev.ListDevices(ctx, &notifyv1.ListDevicesRequest{UserId: "u1", PageToken: token("1700000000000000/a\x00")})
			return err
		}},
		{"devices page, device id not UTF-8", func(ctx context.Context) error {
			_, err := a.dev.ListDevices(ctx, &notifyv1.ListDevicesRequest{UserId: "u1", PageToken: token("1700000000000000/a\xff")})
			return err
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if diff := cmp.Diff([]string{"page_token"}, badFields(t, tt.call(ctx))); diff != "" {
				t.Errorf("fields (-want +got):\n%s", diff)
			}
		})
	}
}

// publishOne publishes a notification to one token and returns its id.
func publishOne(t *testing.T, a *api) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req := validRequest()
	req.Recipients = toTokens("tok-1")
	resp, err := a.pub.Publish(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetNotificationId()
}
