package server

import (
	"context"

	"notify/services/producer/internal/apikey"
)

type (
	callerKey struct{}
	roleKey   struct{}
)

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
	return DefaultCaller
}

// WithRole returns a context that carries the role of the API key making the call.
func WithRole(ctx context.Context, role apikey.Role) context.Context {
	return context.WithValue(ctx, roleKey{}, role)
}

// IsAdmin reports whether the call is made with an admin key: some options of the
// publisher's RPCs (Publish's ignore_preferences, cancelling another caller's
// notification) are the admin's alone.
func IsAdmin(ctx context.Context) bool {
	role, _ := ctx.Value(roleKey{}).(apikey.Role)
	return role == apikey.RoleAdmin
}
