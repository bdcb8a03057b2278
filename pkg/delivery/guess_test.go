package delivery

import (
	"context"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/uuid"

	"notify/pkg/fcm"
	"notify/pkg/pgtest"
	"notify/pkg/schema"
	notifyv1 "notify/proto/gen/notify/v1"
)

// TestLoadWithPagesIsLoadManyAndFirstPages: a notification loaded with the guess its
// SendTask carries is the one LoadMany builds from its stored request, and its first page
// (read in the same round trip) is FirstPages'; a notification no longer in the guessed
// generation gets no page, and one without a guess is loaded as LoadMany loads it.
func TestLoadWithPagesIsLoadManyAndFirstPages(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	store := NewStore(db.Pool)
	if _, err := db.Pool.Exec(ctx, `INSERT INTO devices (device_id, user_id, token, platform)
		SELECT 'd' || i, 'u' || (i % 3), 'tok-' || i, 'android' FROM generate_series(1, 9) i`); err != nil {
		t.Fatal(err)
	}
	ttl := int64(3600)
	reqs := []*notifyv1.PublishRequest{
		{Type: "chat", Recipients: &notifyv1.Recipients{Target: &notifyv1.Recipients_UserIds{UserIds: &notifyv1.UserIDs{UserIds: []string{"u1", "u2"}}}},
			Content: &notifyv1.Content{Title: "hi", Body: "there"}, Data: map[string]string{"k": "v"}},
		{Type: "raw", Recipients: &notifyv1.Recipients{Target: &notifyv1.Recipients_Tokens{Tokens: &notifyv1.Tokens{Tokens: []string{"tok-1", "unknown"}}}},
			Content: &notifyv1.Content{Title: "t"}},
		{Type: "old", Recipients: &notifyv1.Recipients{Target: &notifyv1.Recipients_UserIds{UserIds: &notifyv1.UserIDs{UserIds: []string{"u0"}}}},
			Content: &notifyv1.Content{Title: "replayed"}},
		{Type: "plain", Recipients: &notifyv1.Recipients{Target: &notifyv1.Recipients_UserIds{UserIds: &notifyv1.UserIDs{UserIds: []string{"u0"}}}},
			Content: &notifyv1.Content{Title: "no copy"}},
	}
	ids := make([]string, len(reqs))
	for i, req := range reqs {
		stored, err := schema.EncodeRequest(req)
		if err != nil {
			t.Fatal(err)
		}
		id := uuid.New()
		ids[i] = id.String()
		if _, err := db.Pool.Exec(ctx, `INSERT INTO notifications (id, caller, type, request, expires_at, replay_count)
			VALUES ($1, 'test', $2, $3, now() + make_interval(secs => $4), $5)`, id, req.GetType(), stored, ttl, min(i/2, 1)*(i%3)); err != nil {
			t.Fatal(err)
		}
	}
	// The third is in generation 2 (replayed twice since its task was written); the fourth
	// has no copy.
	guesses := []Guess{NewGuess(ids[0], reqs[0], 0), NewGuess(ids[1], reqs[1], 0), NewGuess(ids[2], reqs[2], 0)}

	found, bad, pages, err := store.LoadWithPages(ctx, append(ids, "not-a-uuid", uuid.NewString()), guesses, fcm.MaxMulticast)
	if err != nil || len(bad) != 0 {
		t.Fatalf("LoadWithPages: %v, %v", err, bad)
	}
	want, wantBad, err := store.LoadMany(ctx, ids)
	if err != nil || len(wantBad) != 0 {
		t.Fatalf("LoadMany: %v, %v", err, wantBad)
	}
	if diff := cmp.Diff(want, found); diff != "" {
		t.Errorf("LoadWithPages' notifications differ from LoadMany's (-LoadMany +LoadWithPages):\n%s", diff)
	}
	if found[ids[2]].Generation != 2 {
		t.Fatalf("the third notification's generation %d, want 2", found[ids[2]].Generation)
	}
	wantPages, err := store.FirstPages(ctx, []*Notification{want[ids[0]], want[ids[1]]}, fcm.MaxMulticast)
	if err != nil {
		t.Fatal(err)
	}
	for i, id := range ids[:2] {
		if diff := cmp.Diff(wantPages[i], pages[id]); diff != "" {
			t.Errorf("page of %s differs from FirstPages' (-FirstPages +LoadWithPages):\n%s", reqs[i].GetType(), diff)
		}
		if len(pages[id].Targets) == 0 {
			t.Errorf("page of %s is empty", reqs[i].GetType())
		}
	}
	if p, ok := pages[ids[2]]; ok {
		t.Errorf("a page %+v for a notification no longer in the guessed generation", p)
	}
	if p, ok := pages[ids[3]]; ok {
		t.Errorf("a page %+v for a notification without a guess", p)
	}
}
