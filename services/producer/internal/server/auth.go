package server

import (
	"context"
	"errors"
	"log/slog"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"

	notifyv1 "notify/proto/gen/notify/v1"
	"notify/services/producer/internal/apikey"
)

// verifier checks a presented secret; *apikey.Verifier satisfies it.
type verifier interface {
	Verify(ctx context.Context, secret string) (apikey.Key, error)
}

// Auth authenticates every call with its bearer API key and authorizes it by the key's
// role: NotificationService and DeviceService need publisher (or admin), everything else
// needs admin, except health checks and server reflection, which are open. A method of a
// service not named here needs admin: new services are closed until someone opens them.
//
// The key's name becomes the call's caller (Caller): it is recorded on notifications
// and scopes idempotency keys. Its role and apps travel with the call too (IsAdmin,
// permitApp).
type Auth struct {
	keys verifier
	log  *slog.Logger

	refused *prometheus.CounterVec
}

// NewAuth returns the interceptors' implementation and registers its metrics.
func NewAuth(keys verifier, log *slog.Logger, reg prometheus.Registerer) *Auth {
	a := &Auth{
		keys: keys, log: log,
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "notify_auth_refused_total", Help: "Calls refused by authentication or authorization, by reason.",
		}, []string{"reason"}),
	}
	reg.MustRegister(a.refused)
	for _, r := range []string{"missing_key", "unknown_key", "role"} {
		a.refused.WithLabelValues(r)
	}
	return a
}

// Unary is the unary server interceptor.
func (a *Auth) Unary() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		ctx, err := a.authorize(ctx, info.FullMethod)
		if err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
}

// Stream is the stream server interceptor.
func (a *Auth) Stream() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		ctx, err := a.authorize(ss.Context(), info.FullMethod)
		if err != nil {
			return err
		}
		return handler(srv, &authorizedStream{ServerStream: ss, ctx: ctx})
	}
}

// authorizedStream carries the caller in its context.
type authorizedStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *authorizedStream) Context() context.Context { return s.ctx }

// Method prefixes and the role they need; open ones need none.
var (
	openPrefixes = []string{
		"/" + healthpb.Health_ServiceDesc.ServiceName + "/",
		"/grpc.reflection.", // v1 and v1alpha
	}
	publisherPrefixes = []string{
		"/" + notifyv1.NotificationService_ServiceDesc.ServiceName + "/",
		"/" + notifyv1.DeviceService_ServiceDesc.ServiceName + "/",
	}
)

// requiredRole is the role fullMethod needs, "" when it is open to everyone.
func requiredRole(fullMethod string) apikey.Role {
	for _, p := range openPrefixes {
		if strings.HasPrefix(fullMethod, p) {
			return ""
		}
	}
	for _, p := range publisherPrefixes {
		if strings.HasPrefix(fullMethod, p) {
			return apikey.RolePublisher
		}
	}
	return apikey.RoleAdmin
}

func (a *Auth) authorize(ctx context.Context, fullMethod string) (context.Context, error) {
	need := requiredRole(fullMethod)
	if need == "" {
		return ctx, nil
	}
	secret, ok := bearer(ctx)
	if !ok {
		a.refused.WithLabelValues("missing_key").Inc()
		return nil, toStatus(ctx, a.log, "authenticate", errUnauthenticated)
	}
	key, err := a.keys.Verify(ctx, secret)
	if err != nil {
		if errors.Is(err, apikey.ErrUnknown) {
			a.refused.WithLabelValues("unknown_key").Inc()
		}
		return nil, toStatus(ctx, a.log, "authenticate", err, "method", fullMethod)
	}
	if !key.Role.Allows(need) {
		a.refused.WithLabelValues("role").Inc()
		a.log.InfoContext(ctx, "call refused: role", "key", key.Name, "role", key.Role, "method", fullMethod)
		return nil, toStatus(ctx, a.log, "authorize", errPermissionDenied)
	}
	// One context value carries the key; Caller, IsAdmin and the app checks read it.
	return withKey(ctx, key), nil
}

// bearer returns the secret of the call's `authorization: Bearer <secret>` header. More
// than one authorization header is refused rather than guessed at.
func bearer(ctx context.Context) (string, bool) {
	values := metadata.ValueFromIncomingContext(ctx, "authorization") // copies this header only, not all metadata
	if len(values) != 1 {
		return "", false
	}
	scheme, secret, ok := strings.Cut(strings.TrimSpace(values[0]), " ")
	if !ok || !strings.EqualFold(scheme, "bearer") {
		return "", false
	}
	secret = strings.TrimSpace(secret)
	return secret, secret != ""
}
