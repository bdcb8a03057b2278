package server

import (
	"context"
	"slices"

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

// mayIgnorePreferences reports whether the call may set Publish's
// options.ignore_preferences: an admin key, or a key created with allow_ignore_preferences.
func mayIgnorePreferences(ctx context.Context) bool {
	if IsAdmin(ctx) {
		return true
	}
	k, ok := keyFrom(ctx)
	return ok && k.CanIgnorePreferences()
}
