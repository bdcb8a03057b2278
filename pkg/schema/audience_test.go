package schema_test

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"notify/pkg/pgtest"
	"notify/pkg/schema"
	notifyv1 "notify/proto/gen/notify/v1"
)

// TestVocabulary: every status and outcome the code writes is one the tables accept, and
// the tables refuse a word outside the vocabulary (so the CHECK constraints are live).
func TestVocabulary(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	id := uuid.New()
	if _, err := db.Pool.Exec(ctx, `INSERT INTO notifications (id, caller, type, request, expires_at)
		VALUES ($1, 'c', 't', '{}', now())`, id); err != nil {
		t.Fatal(err)
	}
	for _, s := range schema.Statuses {
		if _, err := db.Pool.Exec(ctx, "UPDATE notifications SET status = $2 WHERE id = $1", id, s); err != nil {
			t.Errorf("status %q: %v", s, err)
		}
	}
	if _, err := db.Pool.Exec(ctx, "UPDATE notifications SET status = 'sent' WHERE id = $1", id); err == nil {
		t.Error("status 'sent' accepted, want a check violation")
	}
	for i, o := range schema.Outcomes {
		if _, err := db.Pool.Exec(ctx, `INSERT INTO deliveries (notification_id, token, outcome) VALUES ($1, $2, $3)`,
			id, "tok-"+string(rune('a'+i)), o); err != nil {
			t.Errorf("outcome %q: %v", o, err)
		}
	}
	if _, err := db.Pool.Exec(ctx, `INSERT INTO deliveries (notification_id, token, outcome) VALUES ($1, 'x', 'sent')`, id); err == nil {
		t.Error("outcome 'sent' accepted, want a check violation")
	}
}

func TestAudienceOf(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		req  *notifyv1.PublishRequest
		want schema.Audience
	}{
		{"user ids", &notifyv1.PublishRequest{Recipients: &notifyv1.Recipients{Target: &notifyv1.Recipients_UserIds{
			UserIds: &notifyv1.UserIDs{UserIds: []string{"ana"}}}}}, schema.Audience{Kind: schema.AudienceUsers, Targets: []string{"ana"}}},
		{"tokens", &notifyv1.PublishRequest{Recipients: &notifyv1.Recipients{Target: &notifyv1.Recipients_Tokens{
			Tokens: &notifyv1.Tokens{Tokens: []string{"t1"}}}}}, schema.Audience{Kind: schema.AudienceTokens, Targets: []string{"t1"}}},
		{"all devices", &notifyv1.PublishRequest{Recipients: &notifyv1.Recipients{Target: &notifyv1.Recipients_AllDevices{
			AllDevices: &notifyv1.AllDevices{}}}}, schema.Audience{Kind: schema.AudienceAll}},
		{"users of a type", &notifyv1.PublishRequest{Type: "promo", Recipients: &notifyv1.Recipients{Target: &notifyv1.Recipients_UserIds{
			UserIds: &notifyv1.UserIDs{UserIds: []string{"ana"}}}}}, schema.Audience{Kind: schema.AudienceUsers, Targets: []string{"ana"}, MutedType: "promo"}},
		{"broadcast of a type", &notifyv1.PublishRequest{Type: "promo", Recipients: &notifyv1.Recipients{Target: &notifyv1.Recipients_AllDevices{
			AllDevices: &notifyv1.AllDevices{}}}}, schema.Audience{Kind: schema.AudienceAll, MutedType: "promo"}},
		{"ignoring preferences", &notifyv1.PublishRequest{Type: "security", Options: &notifyv1.Options{IgnorePreferences: true},
			Recipients: &notifyv1.Recipients{Target: &notifyv1.Recipients_AllDevices{AllDevices: &notifyv1.AllDevices{}}}},
			schema.Audience{Kind: schema.AudienceAll}},
		{"an app's broadcast", &notifyv1.PublishRequest{App: "staff", Recipients: &notifyv1.Recipients{Target: &notifyv1.Recipients_AllDevices{
			AllDevices: &notifyv1.AllDevices{}}}}, schema.Audience{Kind: schema.AudienceAll, App: "staff"}},
		{"tokens of a type", &notifyv1.PublishRequest{Type: "promo", Recipients: &notifyv1.Recipients{Target: &notifyv1.Recipients_Tokens{
			Tokens: &notifyv1.Tokens{Tokens: []string{"t1"}}}}}, schema.Audience{Kind: schema.AudienceTokens, Targets: []string{"t1"}}},
		{"topic of a type", &notifyv1.PublishRequest{Type: "promo", Recipients: &notifyv1.Recipients{Target: &notifyv1.Recipients_Topic{
			Topic: "news"}}}, schema.Audience{Kind: schema.AudienceTokens, Targets: []string{"/topics/news"}}},
		{"topic named with /topics/", &notifyv1.PublishRequest{Recipients: &notifyv1.Recipients{Target: &notifyv1.Recipients_Topic{
			Topic: "/topics/news"}}}, schema.Audience{Kind: schema.AudienceTokens, Targets: []string{"/topics/news"}}},
		{"condition", &notifyv1.PublishRequest{Recipients: &notifyv1.Recipients{Target: &notifyv1.Recipients_Condition{
			Condition: "'a' in topics"}}}, schema.Audience{Kind: schema.AudienceTokens, Targets: []string{"condition:'a' in topics"}}},
	} {
		b, err := schema.EncodeRequest(tc.req)
		if err != nil {
			t.Fatal(err)
		}
		req, err := schema.DecodeRequest(b)
		if err != nil {
			t.Fatal(err)
		}
		if tc.want.App == "" {
			tc.want.App = schema.DefaultApp // a request naming no app is for the default app
		}
		if diff := cmp.Diff(tc.want, schema.AudienceOf(req)); diff != "" {
			t.Errorf("%s: AudienceOf through the stored request (-want +got):\n%s", tc.name, diff)
		}
	}
	if _, _, err := (schema.Audience{}).CountUnsettled(uuid.New()); err == nil {
		t.Error("an Audience of no kind counted, want an error (it must never mean everyone)")
	}
}

// TestAudienceQueries: for each kind, the sender's pages and the replay's count select the
// same targets: those of the audience with no settled delivery (failed ones included,
// inactive devices and duplicates excluded).
func TestAudienceQueries(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	exec := func(sql string, args ...any) {
		t.Helper()
		if _, err := db.Pool.Exec(ctx, sql, args...); err != nil {
			t.Fatal(err)
		}
	}
	exec(`INSERT INTO devices (device_id, user_id, token, platform) VALUES
		('d1', 'ana', 'tok-1', 'android'), ('d2', 'ana', 'tok-2', 'ios'), ('d3', 'ana', 'tok-3', 'web'),
		('d4', 'bob', 'tok-4', 'android'), ('d5', 'bob', 'tok-5', 'android'), ('d6', 'cy', 'tok-6', 'android'),
		('d7', 'cy', 'tok-7', 'android')`)
	exec(`UPDATE devices SET active = false, deactivated_at = now(), deactivation_reason = $1 WHERE device_id = 'd5'`, schema.DeactivatedStale)
	// App staff: ana again with tok-2 (the same token string, another project) and dan. The
	// default app's audiences never see them, and staff's see nothing else.
	exec(`INSERT INTO devices (device_id, user_id, token, platform, app) VALUES
		('s1', 'ana', 'tok-2', 'android', 'staff'), ('s2', 'dan', 'tok-s2', 'android', 'staff')`)
	id := uuid.New()
	exec(`INSERT INTO notifications (id, caller, type, request, expires_at) VALUES ($1, 'c', 't', '{}', now())`, id)
	// tok-1 delivered, tok-2 failed (sent again), tok-3 retrying (the retrier's), tok-6
	// invalid, tok-raw expired.
	exec(`INSERT INTO deliveries (notification_id, token, outcome) VALUES
		($1, 'tok-1', $2), ($1, 'tok-2', $3), ($1, 'tok-3', $4), ($1, 'tok-6', $5), ($1, 'tok-raw', $6)`,
		id, schema.OutcomeDelivered, schema.OutcomeFailed, schema.OutcomeRetrying, schema.OutcomeInvalid, schema.OutcomeExpired)

	// bob muted type t; cy muted another type.
	exec(`INSERT INTO preferences (user_id, muted_types) VALUES ('bob', '{x,t}'), ('cy', '{x}')`)

	type target struct {
		Key, Device, User, Token string
		Muted                    bool
		Unrecorded               bool // no delivery of the token at all (UnsettledPage only)
	}
	var users []schema.Audience // the users audiences below
	var wantUsers [][]target    // and what their pages select
	for _, tc := range []struct {
		name     string
		audience schema.Audience
		want     []target
	}{
		{"users", schema.Audience{Kind: schema.AudienceUsers, Targets: []string{"ana", "bob", "nobody"}},
			[]target{{"d2", "d2", "ana", "tok-2", false, false}, {"d4", "d4", "bob", "tok-4", false, true}}},
		{"users honouring preferences", schema.Audience{Kind: schema.AudienceUsers, Targets: []string{"ana", "bob", "nobody"}, MutedType: "t"},
			[]target{{"d2", "d2", "ana", "tok-2", false, false}, {"d4", "d4", "bob", "tok-4", true, true}}},
		{"all", schema.Audience{Kind: schema.AudienceAll},
			[]target{{"d2", "d2", "ana", "tok-2", false, false}, {"d4", "d4", "bob", "tok-4", false, true}, {"d7", "d7", "cy", "tok-7", false, true}}},
		{"all honouring preferences", schema.Audience{Kind: schema.AudienceAll, MutedType: "t"},
			[]target{{"d2", "d2", "ana", "tok-2", false, false}, {"d4", "d4", "bob", "tok-4", true, true}, {"d7", "d7", "cy", "tok-7", false, true}}},
		{"users of app staff", schema.Audience{Kind: schema.AudienceUsers, Targets: []string{"ana", "bob", "dan"}, App: "staff"},
			[]target{{"s1", "s1", "ana", "tok-2", false, false}, {"s2", "s2", "dan", "tok-s2", false, true}}},
		{"all of app staff", schema.Audience{Kind: schema.AudienceAll, App: "staff"},
			[]target{{"s1", "s1", "ana", "tok-2", false, false}, {"s2", "s2", "dan", "tok-s2", false, true}}},
		{"tokens of app staff", schema.Audience{Kind: schema.AudienceTokens, Targets: []string{"tok-s2", "tok-4"}, App: "staff"},
			[]target{{"tok-4", "", "", "tok-4", false, true}, {"tok-s2", "s2", "dan", "tok-s2", false, true}}},
		{"tokens", schema.Audience{Kind: schema.AudienceTokens, Targets: []string{"tok-7", "tok-1", "tok-new", "tok-7", "tok-raw", "tok-5", "tok-4"}, MutedType: "t"},
			[]target{{"tok-4", "d4", "bob", "tok-4", false, true}, {"tok-5", "", "", "tok-5", false, true}, {"tok-7", "d7", "cy", "tok-7", false, true}, {"tok-new", "", "", "tok-new", false, true}}},
	} {
		var got []target
		after := ""
		for page := 0; ; page++ {
			if page > 10 {
				t.Fatalf("%s: more than 10 pages of 2", tc.name)
			}
			q, args, err := tc.audience.UnsettledPage(id, 0, after, 2)
			if err != nil {
				t.Fatal(err)
			}
			rows, err := db.Pool.Query(ctx, q, args...)
			if err != nil {
				t.Fatalf("%s: %v\n%s", tc.name, err, q)
			}
			ts, err := pgx.CollectRows(rows, pgx.RowToStructByPos[target])
			if err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			got = append(got, ts...)
			if len(ts) < 2 {
				break
			}
			after = ts[len(ts)-1].Key
		}
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("%s: pages (-want +got):\n%s", tc.name, diff)
		}
		if !slices.IsSortedFunc(got, func(a, b target) int { return strings.Compare(a.Key, b.Key) }) {
			t.Errorf("%s: pages not in key order: %v", tc.name, got)
		}

		if tc.audience.Kind == schema.AudienceUsers {
			users = append(users, tc.audience)
			w := slices.Clone(tc.want)
			for k := range w {
				w[k].Unrecorded = false // UsersFirstPages does not say
			}
			wantUsers = append(wantUsers, w)
		}

		q, args, err := tc.audience.CountUnsettled(id)
		if err != nil {
			t.Fatal(err)
		}
		var n int
		if err := db.Pool.QueryRow(ctx, q, args...).Scan(&n); err != nil {
			t.Fatalf("%s: %v\n%s", tc.name, err, q)
		}
		if n != len(tc.want) {
			t.Errorf("%s: CountUnsettled = %d, want %d (what the pages select)", tc.name, n, len(tc.want))
		}
	}

	// The users audiences' first pages in one query select what their pages select, each
	// for its own notification: another notification, with nothing settled (every active
	// device of its users), among them, and a users audience of nobody selecting nothing.
	other := uuid.New()
	exec(`INSERT INTO notifications (id, caller, type, request, expires_at) VALUES ($1, 'c', 't', '{}', now())`, other)
	ids := make([]uuid.UUID, 0, len(users)+2)
	var audiences []schema.Audience
	for _, a := range users {
		ids, audiences = append(ids, id), append(audiences, a)
	}
	ids, audiences = append(ids, other), append(audiences, schema.Audience{Kind: schema.AudienceUsers, Targets: []string{"ana"}})
	wantUsers = append(wantUsers, []target{{"d1", "d1", "ana", "tok-1", false, false}, {"d2", "d2", "ana", "tok-2", false, false}, {"d3", "d3", "ana", "tok-3", false, false}})
	ids, audiences = append(ids, id), append(audiences, schema.Audience{Kind: schema.AudienceUsers})
	wantUsers = append(wantUsers, nil)
	for _, limit := range []int{500, 1} {
		q, args, err := schema.UsersFirstPages(ids, nil, audiences, limit)
		if err != nil {
			t.Fatal(err)
		}
		rows, err := db.Pool.Query(ctx, q, args...)
		if err != nil {
			t.Fatalf("UsersFirstPages: %v\n%s", err, q)
		}
		got := make([][]target, len(ids))
		var i int
		var tg target
		if _, err := pgx.ForEachRow(rows, []any{&i, &tg.Key, &tg.Device, &tg.User, &tg.Token, &tg.Muted}, func() error {
			got[i-1] = append(got[i-1], tg)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		want := make([][]target, len(wantUsers))
		for k, w := range wantUsers {
			want[k] = w[:min(len(w), limit)]
			if len(want[k]) == 0 {
				want[k] = nil
			}
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("UsersFirstPages, limit %d (-want +got):\n%s", limit, diff)
		}
	}
	if _, _, err := schema.UsersFirstPages([]uuid.UUID{id}, []int{0}, []schema.Audience{{Kind: schema.AudienceAll}}, 1); err == nil {
		t.Error("UsersFirstPages of a broadcast: no error")
	}
}
