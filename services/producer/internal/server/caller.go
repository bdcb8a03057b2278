package server

import "context"

type callerKey struct{}

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
