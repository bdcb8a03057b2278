package delivery

import (
	"context"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/uuid"

	"notify/pkg/pgtest"
	"notify/pkg/schema"
)

// TestDeadLetteredTokenSettledInItsGeneration: a token dead-lettered (failed) by a sender or
// retrier of the notification's current generation (replay_count) is not selected again by
// any of the reads that decide what to send (the sender's pages, its first pages of users
// audiences, the retrier's Unsettled); after a replay (replay_count + 1) it is, and the
// replay's count includes it. A failed token no sender dead-lettered in this generation is
// always selected: written by a binary from before migration 0019 (NULL), or moved from
// retrying by the re-drive. Delivered and retrying tokens stay settled throughout.
func TestDeadLetteredTokenSettledInItsGeneration(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	store := NewStore(db.Pool)
	exec := func(sql string, args ...any) {
		t.Helper()
		if _, err := db.Pool.Exec(ctx, sql, args...); err != nil {
			t.Fatalf("%v\n%s", err, sql)
		}
	}
	exec(`INSERT INTO devices (device_id, user_id, token, platform) VALUES
		('d1', 'ana', 'u-failed', 'android'), ('d2', 'ana', 'u-ok', 'android'), ('d3', 'ana', 'u-new', 'android')`)
	tokensID, usersID := uuid.New(), uuid.New()
	exec(`INSERT INTO notifications (id, caller, type, request, expires_at) VALUES
		($1, 'test', 't', '{"type":"t","recipients":{"tokens":{"tokens":["t-failed","t-old","t-stale","t-ok","t-new"]}}}', now() + interval '1 hour'),
		($2, 'test', 't', '{"type":"t","recipients":{"userIds":{"userIds":["ana"]}}}', now() + interval '1 hour')`, tokensID, usersID)
	load := func(id uuid.UUID) *Notification {
		t.Helper()
		n, err := store.Load(ctx, id.String())
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	o := func(token, outcome string) Outcome {
		return Outcome{Target: Target{Token: token}, Outcome: outcome, Attempts: 1, ErrorCode: "X"}
	}
	tn, un := load(tokensID), load(usersID)
	if _, err := store.RecordMany(ctx, []Record{
		{ID: tokensID, Generation: tn.Generation, Outcomes: []Outcome{o("t-failed", schema.OutcomeFailed), o("t-ok", schema.OutcomeDelivered),
			o("t-stale", schema.OutcomeRetrying), o("t-old", schema.OutcomeRetrying)}},
		{ID: usersID, Generation: un.Generation, Outcomes: []Outcome{o("u-failed", schema.OutcomeFailed), o("u-ok", schema.OutcomeDelivered)}},
	}); err != nil {
		t.Fatal(err)
	}
	// t-old failed by a binary from before migration 0019 (it leaves the column alone), and
	// t-stale moved to failed by the re-drive (a retry that never came).
	exec(`UPDATE deliveries SET outcome = 'failed' WHERE notification_id = $1 AND token = 't-old'`, tokensID)
	exec(`UPDATE deliveries SET outcome = 'failed', dead_letter_generation = NULL WHERE notification_id = $1 AND token = 't-stale'`, tokensID)

	tokensOf := func(ts []Target) []string {
		var out []string
		for _, t := range ts {
			out = append(out, t.Token)
		}
		slices.Sort(out)
		return out
	}
	check := func(when string, wantTokens, wantUsers []string) {
		t.Helper()
		tn, un := load(tokensID), load(usersID)
		page, _, err := store.Audience(ctx, tn, "", 500)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(wantTokens, tokensOf(page)); diff != "" {
			t.Errorf("%s: the sender's page of raw tokens (-want +got):\n%s", when, diff)
		}
		left, err := store.Unsettled(ctx, tn, []string{"t-failed", "t-old", "t-stale", "t-ok", "t-new"})
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(wantTokens, tokensOf(left)); diff != "" {
			t.Errorf("%s: the retrier's Unsettled (-want +got):\n%s", when, diff)
		}
		pages, err := store.FirstPages(ctx, []*Notification{un, tn}, 500)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(wantUsers, tokensOf(pages[0].Targets)); diff != "" {
			t.Errorf("%s: the users audience's first page (-want +got):\n%s", when, diff)
		}
		if diff := cmp.Diff(wantTokens, tokensOf(pages[1].Targets)); diff != "" {
			t.Errorf("%s: the raw tokens' first page (-want +got):\n%s", when, diff)
		}
		page, _, err = store.Audience(ctx, un, "", 500)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(wantUsers, tokensOf(page)); diff != "" {
			t.Errorf("%s: the sender's page of users (-want +got):\n%s", when, diff)
		}
	}
	check("redelivered", []string{"t-new", "t-old", "t-stale"}, []string{"u-new"})

	// What a replay will send is counted as after the replay: every failed token.
	for _, tc := range []struct {
		n    *Notification
		want int
	}{{load(tokensID), 4}, {load(usersID), 2}} {
		q, args, err := tc.n.Audience.CountUnsettled(tc.n.ID)
		if err != nil {
			t.Fatal(err)
		}
		var got int
		if err := db.Pool.QueryRow(ctx, q, args...).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got != tc.want {
			t.Errorf("%s: the replay's count is %d, want %d", tc.n.Audience.Kind, got, tc.want)
		}
	}

	exec(`UPDATE notifications SET replay_count = replay_count + 1`)
	check("replayed", []string{"t-failed", "t-new", "t-old", "t-stale"}, []string{"u-failed", "u-new"})

	// The replay's sender dead-letters t-failed again, in its generation, and delivers u-failed
	// (which leaves no generation behind).
	tn, un = load(tokensID), load(usersID)
	if _, err := store.RecordMany(ctx, []Record{
		{ID: tokensID, Generation: tn.Generation, Outcomes: []Outcome{o("t-failed", schema.OutcomeFailed)}},
		{ID: usersID, Generation: un.Generation, Outcomes: []Outcome{o("u-failed", schema.OutcomeDelivered)}},
	}); err != nil {
		t.Fatal(err)
	}
	check("redelivered after the replay", []string{"t-new", "t-old", "t-stale"}, []string{"u-new"})
	var gens []*int32
	rows, err := db.Pool.Query(ctx, `SELECT dead_letter_generation FROM deliveries WHERE token IN ('t-failed', 'u-failed', 't-ok') ORDER BY token`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var g *int32
		if err := rows.Scan(&g); err != nil {
			t.Fatal(err)
		}
		gens = append(gens, g)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	one := int32(1)
	if diff := cmp.Diff([]*int32{&one, nil, nil}, gens); diff != "" {
		t.Errorf("dead_letter_generation of t-failed, t-ok, u-failed (-want +got):\n%s", diff)
	}
}
