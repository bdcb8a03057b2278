package server

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"notify/pkg/schema"
)

// Apps are the app names the producer accepts on Publish, RegisterDevice(s) and
// CreateAPIKey: those of FCM_APPS_FILE or APPS. The zero value knows only "default".
type Apps struct {
	names []string // sorted; nil means only schema.DefaultApp
}

// NewApps returns the set of names.
func NewApps(names ...string) Apps {
	return Apps{names: slices.Compact(slices.Sorted(slices.Values(names)))}
}

// Names returns the known app names, sorted.
func (a Apps) Names() []string {
	if a.names == nil {
		return []string{schema.DefaultApp}
	}
	return slices.Clone(a.names)
}

func (a Apps) known(app string) bool {
	if a.names == nil {
		return app == schema.DefaultApp
	}
	_, found := slices.BinarySearch(a.names, app)
	return found
}

// check adds a violation of field when app is set and not a known app; "" is the default
// app.
func (a Apps) check(v *violations, field, app string) {
	if app == "" || a.known(app) {
		return
	}
	v.add(field, "is %q, not a known app; the apps are: %s", app, strings.Join(a.Names(), ", "))
}

// permitApp refuses, with PERMISSION_DENIED, a call whose API key is limited to apps other
// than app ("" is the default app).
func permitApp(ctx context.Context, log *slog.Logger, app string) error {
	if app == "" {
		app = schema.DefaultApp
	}
	if keyAllows(ctx, app) {
		return nil
	}
	log.InfoContext(ctx, "call refused: app", "key", Caller(ctx), "app", app)
	return status.Error(codes.PermissionDenied, fmt.Sprintf("the API key %q may not act for app %q", Caller(ctx), app))
}
