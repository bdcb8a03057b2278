package server

import (
	"context"
	"log/slog"
	"slices"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"notify/services/producer/internal/apikey"
)

type (
	callerKey struct{}
	roleKey   struct{}
)

type keyAppsKey struct{}

// WithKeyApps returns a context that carries the apps the call's API key is limited to (nil:
// every app).
func WithKeyApps(ctx context.Context, apps []string) context.Context {
	if apps == nil {
		return ctx
	}
	return context.WithValue(ctx, keyAppsKey{}, apps)
}

// keyApps returns the apps the call's API key is limited to; ok is false when it may act for
// every app.
func keyApps(ctx context.Context) (apps []string, ok bool) {
	if apps, ok = ctx.Value(keyAppsKey{}).([]string); ok {
		return apps, true
	}
	if k, found := keyFrom(ctx); found && k.Apps != nil {
		return k.Apps, true
	}
	return nil, false
}

// keyAllows reports whether the call's API key may act for app.
func keyAllows(ctx context.Context, app string) bool {
	apps, ok := keyApps(ctx)
	return !ok || slices.Contains(apps, app)
}

// WithCaller returns a context that carries the name of the API key making the call.
func WithCaller(ctx context.Context, name string) context.Context {
	return context.WithValue(ctx, callerKey{}, name)
}

// DefaultCaller is recorded for calls that carry no caller (no authentication configured).
const DefaultCaller = "anonymous"

// Caller is the name of the API key making the call; idempotency keys are unique per
// caller.
func Caller(ctx context.Context) string {
	if name, ok := ctx.Value(callerKey{}).(string); ok && name != "" {
		return name
	}
	if k, ok := keyFrom(ctx); ok && k.Name != "" {
		return k.Name
	}
	return DefaultCaller
}

// WithRole returns a context that carries the role of the API key making the call.
func WithRole(ctx context.Context, role apikey.Role) context.Context {
	return context.WithValue(ctx, roleKey{}, role)
}

// IsAdmin reports whether the call is made with an admin key: some options of the
// publisher's RPCs (cancelling another caller's notification) are the admin's alone.
func IsAdmin(ctx context.Context) bool {
	if role, ok := ctx.Value(roleKey{}).(apikey.Role); ok {
		return role == apikey.RoleAdmin
	}
	k, ok := keyFrom(ctx)
	return ok && k.Role == apikey.RoleAdmin
}

// permitIgnorePreferences refuses, with PERMISSION_DENIED, a call that may not set Publish's
// options.ignore_preferences: only an admin key, or a key created with
// allow_ignore_preferences, may. A key's permissions are fixed at its creation, so the
// answer names the key a caller needs instead.
func permitIgnorePreferences(ctx context.Context, log *slog.Logger) error {
	if IsAdmin(ctx) {
		return nil
	}
	if k, ok := keyFrom(ctx); ok && k.CanIgnorePreferences() {
		return nil
	}
	log.InfoContext(ctx, "call refused: ignore_preferences", "key", Caller(ctx))
	return status.Errorf(codes.PermissionDenied, "the API key %q may not set options.ignore_preferences: "+
		"that needs an admin key or a publisher key created with allow_ignore_preferences "+
		"(keys create --allow-ignore-preferences)", Caller(ctx))
}
