package server

import (
	"context"
	"errors"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"notify/services/producer/internal/apikey"
)

// fakeKeys is a verifier with fixed keys; "broken" fails as a database outage would.
type fakeKeys map[string]apikey.Key

func (f fakeKeys) Verify(_ context.Context, secret string) (apikey.Key, error) {
	if secret == "broken" {
		return apikey.Key{}, errors.New("connection refused")
	}
	k, ok := f[secret]
	if !ok {
		return apikey.Key{}, apikey.ErrUnknown
	}
	return k, nil
}

func TestAuthUnary(t *testing.T) {
	t.Parallel()
	keys := fakeKeys{
		"pub-secret":   {Name: "orders", Role: apikey.RolePublisher},
		"admin-secret": {Name: "ops", Role: apikey.RoleAdmin},
	}
	const (
		publish = "/notify.v1.NotificationService/Publish"
		device  = "/notify.v1.DeviceService/RegisterDevice"
		replay  = "/notify.v1.AdminService/Replay"
		health  = "/grpc.health.v1.Health/Check"
		reflect = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
		other   = "/other.v1.Secret/Get"
	)
	tests := []struct {
		name       string
		method     string
		auth       []string // authorization header values
		wantCode   codes.Code
		wantCaller string
	}{
		{"publisher publishes", publish, []string{"Bearer pub-secret"}, codes.OK, "orders"},
		{"publisher registers devices", device, []string{"Bearer pub-secret"}, codes.OK, "orders"},
		{"admin publishes", publish, []string{"Bearer admin-secret"}, codes.OK, "ops"},
		{"admin replays", replay, []string{"Bearer admin-secret"}, codes.OK, "ops"},
		{"scheme is case-insensitive", publish, []string{"bearer pub-secret"}, codes.OK, "orders"},
		{"publisher may not replay", replay, []string{"Bearer pub-secret"}, codes.PermissionDenied, ""},
		{"unknown service needs admin", other, []string{"Bearer pub-secret"}, codes.PermissionDenied, ""},
		{"no key", publish, nil, codes.Unauthenticated, ""},
		{"unknown key", publish, []string{"Bearer guess"}, codes.Unauthenticated, ""},
		{"not bearer", publish, []string{"Basic pub-secret"}, codes.Unauthenticated, ""},
		{"empty bearer", publish, []string{"Bearer "}, codes.Unauthenticated, ""},
		{"two headers", publish, []string{"Bearer pub-secret", "Bearer admin-secret"}, codes.Unauthenticated, ""},
		{"key store down", publish, []string{"Bearer broken"}, codes.Internal, ""},
		{"health is open", health, nil, codes.OK, DefaultCaller},
		{"reflection is open", reflect, nil, codes.OK, DefaultCaller},
	}
	auth := NewAuth(keys, discard, prometheus.NewRegistry())
	interceptor := auth.Unary()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			if tt.auth != nil {
				md := metadata.MD{}
				md.Append("authorization", tt.auth...)
				ctx = metadata.NewIncomingContext(ctx, md)
			}
			var caller string
			_, err := interceptor(ctx, nil, &grpc.UnaryServerInfo{FullMethod: tt.method}, func(ctx context.Context, _ any) (any, error) {
				caller = Caller(ctx)
				return nil, nil
			})
			if got := status.Code(err); got != tt.wantCode {
				t.Fatalf("code = %s (%v), want %s", got, err, tt.wantCode)
			}
			if caller != tt.wantCaller {
				t.Errorf("caller = %q, want %q", caller, tt.wantCaller)
			}
		})
	}
}

func TestAuthRefusalsLookAlike(t *testing.T) {
	t.Parallel()
	auth := NewAuth(fakeKeys{}, discard, prometheus.NewRegistry())
	var msgs []string
	for _, header := range []string{"", "Bearer nope", "Basic x"} {
		ctx := context.Background()
		if header != "" {
			ctx = metadata.NewIncomingContext(ctx, metadata.Pairs("authorization", header))
		}
		_, err := auth.authorize(ctx, "/notify.v1.NotificationService/Publish")
		msgs = append(msgs, status.Convert(err).Message())
	}
	for _, m := range msgs[1:] {
		if m != msgs[0] {
			t.Errorf("refusals differ: %q", msgs)
		}
	}
}

type fakeStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s fakeStream) Context() context.Context { return s.ctx }

func TestAuthStream(t *testing.T) {
	t.Parallel()
	auth := NewAuth(fakeKeys{"admin-secret": {Name: "ops", Role: apikey.RoleAdmin}}, discard, prometheus.NewRegistry())
	interceptor := auth.Stream()
	info := &grpc.StreamServerInfo{FullMethod: "/notify.v1.AdminService/Watch"}
	var caller string
	handler := func(_ any, ss grpc.ServerStream) error { caller = Caller(ss.Context()); return nil }

	err := interceptor(nil, fakeStream{ctx: context.Background()}, info, handler)
	if status.Code(err) != codes.Unauthenticated {
		t.Errorf("stream without a key: %v, want Unauthenticated", err)
	}
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer admin-secret"))
	if err := interceptor(nil, fakeStream{ctx: ctx}, info, handler); err != nil || caller != "ops" {
		t.Errorf("stream with the admin key: err %v, caller %q; want nil and ops", err, caller)
	}
}
