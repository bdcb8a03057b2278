package server

import (
	"context"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
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
	_, err = f.dev.GetPreferences(ctx, &notifyv1.GetPreferencesRequest{})
	if diff := cmp.Diff([]string{"user_id"}, badFields(t, err)); diff != "" {
		t.Errorf("GetPreferences without user: fields (-want +got):\n%s", diff)
	}
}

// TestPublishIgnorePreferencesNeedsAdmin: a publisher key may not override users'
// preferences; an admin key may. A refused request writes nothing.
func TestPublishIgnorePreferencesNeedsAdmin(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	req := validRequest()
	req.Options = &notifyv1.Options{IgnorePreferences: true}

	publisher := WithRole(WithCaller(context.Background(), "orders"), apikey.RolePublisher)
	if _, err := f.pub.Publish(publisher, req); status.Code(err) != codes.PermissionDenied {
		t.Errorf("Publish ignoring preferences with a publisher key: %v, want PERMISSION_DENIED", err)
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
