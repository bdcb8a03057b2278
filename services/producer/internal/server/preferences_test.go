package server

import (
	"context"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	notifyv1 "notify/proto/gen/notify/v1"
	"notify/services/producer/internal/apikey"
)

func TestPreferences(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()

	get := func(user string) []string {
		t.Helper()
		resp, err := f.dev.GetPreferences(ctx, &notifyv1.GetPreferencesRequest{UserId: user})
		if err != nil {
			t.Fatalf("GetPreferences(%s): %v", user, err)
		}
		return resp.GetMutedTypes()
	}
	if got := get("ana"); len(got) != 0 {
		t.Errorf("preferences of an unknown user = %v, want none", got)
	}
	set, err := f.dev.SetPreferences(ctx, &notifyv1.SetPreferencesRequest{UserId: "ana", MutedTypes: []string{"promo", "digest", "promo"}})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"digest", "promo"}
	if diff := cmp.Diff(want, set.GetMutedTypes()); diff != "" {
		t.Errorf("SetPreferences answer (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(want, get("ana")); diff != "" {
		t.Errorf("GetPreferences after SetPreferences (-want +got):\n%s", diff)
	}
	if got := get("bob"); len(got) != 0 {
		t.Errorf("another user's preferences = %v, want none", got)
	}
	// PUT semantics: an empty list unmutes everything.
	if _, err := f.dev.SetPreferences(ctx, &notifyv1.SetPreferencesRequest{UserId: "ana"}); err != nil {
		t.Fatal(err)
	}
	if got := get("ana"); len(got) != 0 {
		t.Errorf("preferences after setting none = %v, want none", got)
	}

	longUser := strings.Repeat("u", MaxUserIDLen+1)
	many := make([]string, MaxMutedTypes+1)
	for i := range many {
		many[i] = "t"
	}
	for _, tc := range []struct {
		name string
		req  *notifyv1.SetPreferencesRequest
		want []string
	}{
		{"no user", &notifyv1.SetPreferencesRequest{MutedTypes: []string{"promo"}}, []string{"user_id"}},
		{"long user", &notifyv1.SetPreferencesRequest{UserId: longUser, MutedTypes: []string{"promo"}}, []string{"user_id"}},
		{"bad types", &notifyv1.SetPreferencesRequest{UserId: "ana", MutedTypes: []string{"ok", "", "a b"}},
			[]string{"muted_types[1]", "muted_types[2]"}},
		{"too many", &notifyv1.SetPreferencesRequest{UserId: "ana", MutedTypes: many}, []string{"muted_types"}},
	} {
		_, err := f.dev.SetPreferences(ctx, tc.req)
		if diff := cmp.Diff(tc.want, badFields(t, err)); diff != "" {
			t.Errorf("%s: fields (-want +got):\n%s", tc.name, diff)
		}
	}
	if got := get("ana"); len(got) != 0 {
		t.Errorf("preferences after refused requests = %v, want none (nothing written)", got)
	}
	for user, want := range map[string]string{"": "user_id is required", longUser: "user_id must be at most 128 characters"} {
		_, err = f.dev.GetPreferences(ctx, &notifyv1.GetPreferencesRequest{UserId: user})
		if st := status.Convert(err); st.Code() != codes.InvalidArgument || st.Message() != "invalid request: "+want {
			t.Errorf("GetPreferences(user_id of %d characters): %v, want INVALID_ARGUMENT: invalid request: %s", len(user), err, want)
		}
		_, err = f.dev.SetPreferences(ctx, &notifyv1.SetPreferencesRequest{UserId: user})
		if st := status.Convert(err); st.Code() != codes.InvalidArgument || st.Message() != "invalid request: "+want {
			t.Errorf("SetPreferences(user_id of %d characters): %v, want INVALID_ARGUMENT: invalid request: %s", len(user), err, want)
		}
	}
}

// ignorePreferencesDenied is the refusal of options.ignore_preferences to the publisher key
// "orders": it names the field and how a key gets the permission.
const ignorePreferencesDenied = `the API key "orders" may not set options.ignore_preferences: that needs an admin key ` +
	`or a publisher key created with allow_ignore_preferences (keys create --allow-ignore-preferences)`

// TestPublishIgnorePreferencesNeedsAdmin: a publisher key without the permission may not
// override users' preferences; an admin key may. A refused request writes nothing.
func TestPublishIgnorePreferencesNeedsAdmin(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	req := validRequest()
	req.Options = &notifyv1.Options{IgnorePreferences: true}

	publisher := WithRole(WithCaller(context.Background(), "orders"), apikey.RolePublisher)
	_, err := f.pub.Publish(publisher, req)
	if st := status.Convert(err); st.Code() != codes.PermissionDenied || st.Message() != ignorePreferencesDenied {
		t.Errorf("Publish ignoring preferences with a publisher key: %v, want PERMISSION_DENIED: %s", err, ignorePreferencesDenied)
	}
	var n int
	if err := f.db.Pool.QueryRow(context.Background(), "SELECT (SELECT count(*) FROM notifications) + (SELECT count(*) FROM outbox WHERE message_type <> 'notify.bus.v1.StatusEvent')").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("a refused Publish wrote %d rows", n)
	}
	admin := WithRole(WithCaller(context.Background(), "security"), apikey.RoleAdmin)
	if _, err := f.pub.Publish(admin, req); err != nil {
		t.Errorf("Publish ignoring preferences with an admin key: %v", err)
	}
}

// TestIgnorePreferencesPermission: CreateAPIKey gives a publisher key the permission to set
// ignore_preferences, ListAPIKeys shows who has it, and Publish through the real Auth (keys
// in PostgreSQL, the verifier) accepts it from that key and from an admin key, refuses it
// from a publisher key without it (PERMISSION_DENIED, nothing written), and an admin key
// asking for the permission is INVALID_ARGUMENT.
func TestIgnorePreferencesPermission(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := t.Context()
	secrets := map[string]string{}
	for _, req := range []*notifyv1.CreateAPIKeyRequest{
		{Name: "security", Role: notifyv1.Role_ROLE_PUBLISHER, AllowIgnorePreferences: true},
		{Name: "orders", Role: notifyv1.Role_ROLE_PUBLISHER},
		{Name: "ops", Role: notifyv1.Role_ROLE_ADMIN},
	} {
		resp, err := f.admin.CreateAPIKey(ctxOps, req)
		if err != nil {
			t.Fatalf("CreateAPIKey(%s): %v", req.GetName(), err)
		}
		if got := resp.GetKey().GetAllowIgnorePreferences(); got != (req.GetName() != "orders") {
			t.Errorf("created %s with allow_ignore_preferences %v", req.GetName(), got)
		}
		secrets[req.GetName()] = resp.GetSecret()
	}
	_, err := f.admin.CreateAPIKey(ctxOps, &notifyv1.CreateAPIKeyRequest{Name: "root", Role: notifyv1.Role_ROLE_ADMIN, AllowIgnorePreferences: true})
	if diff := cmp.Diff([]string{"allow_ignore_preferences"}, badFields(t, err)); diff != "" {
		t.Errorf("an admin key asking for the permission: fields (-want +got):\n%s", diff)
	}
	listed, err := f.admin.ListAPIKeys(ctxOps, &notifyv1.ListAPIKeysRequest{})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, k := range listed.GetKeys() {
		got[k.GetName()] = k.GetAllowIgnorePreferences()
	}
	if diff := cmp.Diff(map[string]bool{"security": true, "orders": false, "ops": true}, got); diff != "" {
		t.Errorf("listed allow_ignore_preferences (-want +got):\n%s", diff)
	}

	auth := NewAuth(apikey.NewVerifier(apikey.NewStore(f.db.Pool), 0, discard), discard, prometheus.NewRegistry())
	publish := func(key string, ignore bool) error {
		req := validRequest()
		req.Type = "security." + key
		req.Options = &notifyv1.Options{IgnorePreferences: ignore}
		in := metadata.NewIncomingContext(ctx, metadata.Pairs("authorization", "Bearer "+secrets[key]))
		_, err := auth.Unary()(in, req, &grpc.UnaryServerInfo{FullMethod: notifyv1.NotificationService_Publish_FullMethodName},
			func(ctx context.Context, req any) (any, error) {
				return f.pub.Publish(ctx, req.(*notifyv1.PublishRequest))
			})
		return err
	}
	for _, tc := range []struct {
		key    string
		ignore bool
		want   codes.Code
	}{
		{"security", true, codes.OK},
		{"ops", true, codes.OK},
		{"orders", true, codes.PermissionDenied},
		{"orders", false, codes.OK},
	} {
		before := f.count(t)
		err := publish(tc.key, tc.ignore)
		if status.Code(err) != tc.want {
			t.Errorf("Publish by %s with ignore_preferences=%v: %v, want %v", tc.key, tc.ignore, err, tc.want)
		}
		if wrote := f.count(t) > before; wrote != (tc.want == codes.OK) {
			t.Errorf("Publish by %s with ignore_preferences=%v wrote rows: %v", tc.key, tc.ignore, wrote)
		}
	}
}
