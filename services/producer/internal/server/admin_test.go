package server

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"notify/pkg/pgtest"
	"notify/pkg/rabbit"
	"notify/pkg/schema"
	busv1 "notify/proto/gen/notify/bus/v1"
	notifyv1 "notify/proto/gen/notify/v1"
)

// fixture is a migrated database with the three services on it.
type fixture struct {
	db    *pgtest.DB
	pub   *Notifications
	dev   *Devices
	admin *Admin
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	db := pgtest.New(t)
	return &fixture{
		db:    db,
		pub:   NewNotifications(db.Pool, discard, prometheus.NewRegistry(), nil, GroupCommit{}),
		dev:   NewDevices(db.Pool, discard, prometheus.NewRegistry()),
		admin: NewAdmin(db.Pool, discard, nil, nil),
	}
}

var (
	ctxOps  = WithCaller(context.Background(), "ops")
	toUsers = func(ids ...string) *notifyv1.Recipients {
		return &notifyv1.Recipients{Target: &notifyv1.Recipients_UserIds{UserIds: &notifyv1.UserIDs{UserIds: ids}}}
	}
	toTokens = func(ts ...string) *notifyv1.Recipients {
		return &notifyv1.Recipients{Target: &notifyv1.Recipients_Tokens{Tokens: &notifyv1.Tokens{Tokens: ts}}}
	}
	toEveryone = &notifyv1.Recipients{Target: &notifyv1.Recipients_AllDevices{AllDevices: &notifyv1.AllDevices{}}}
)

func (f *fixture) register(t *testing.T, user, device, token string) {
	t.Helper()
	if _, err := f.dev.RegisterDevice(context.Background(), &notifyv1.RegisterDeviceRequest{
		UserId: user, DeviceId: device, Token: token, Platform: notifyv1.Platform_PLATFORM_ANDROID,
	}); err != nil {
		t.Fatal(err)
	}
}

// publish publishes a notification of type typ to recipients and returns its id.
func (f *fixture) publish(t *testing.T, typ string, to *notifyv1.Recipients, ttl time.Duration) string {
	t.Helper()
	req := &notifyv1.PublishRequest{Type: typ, Recipients: to, Content: &notifyv1.Content{Title: "t"}}
	if ttl > 0 {
		req.Options = &notifyv1.Options{Ttl: durationpb.New(ttl)}
	}
	resp, err := f.pub.Publish(WithCaller(context.Background(), "orders"), req)
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetNotificationId()
}

// settle gives a notification a status and per-token outcomes, with counts to match, as
// the sender and the retrier would have left them.
func (f *fixture) settle(t *testing.T, id, st string, outcomes map[string]string) {
	t.Helper()
	ctx := context.Background()
	var tokens, results []string
	for tok, o := range outcomes {
		tokens, results = append(tokens, tok), append(results, o)
	}
	_, err := f.db.Pool.Exec(ctx, `INSERT INTO deliveries (notification_id, token, outcome, attempts)
		SELECT $1, t, o, 1 FROM unnest($2::text[], $3::text[]) AS x(t, o)`, id, tokens, results)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.db.Pool.Exec(ctx, `UPDATE notifications n SET status = $2,
		total = (SELECT count(*) FROM deliveries d WHERE d.notification_id = n.id),
		delivered = (SELECT count(*) FROM deliveries d WHERE d.notification_id = n.id AND outcome = 'delivered'),
		invalid = (SELECT count(*) FROM deliveries d WHERE d.notification_id = n.id AND outcome = 'invalid'),
		retrying = (SELECT count(*) FROM deliveries d WHERE d.notification_id = n.id AND outcome = 'retrying'),
		failed = (SELECT count(*) FROM deliveries d WHERE d.notification_id = n.id AND outcome = 'failed'),
		expired = (SELECT count(*) FROM deliveries d WHERE d.notification_id = n.id AND outcome = 'expired')
		WHERE id = $1`, id, st)
	if err != nil {
		t.Fatal(err)
	}
}

// deadLetter stores a dead letter for a notification.
func (f *fixture) deadLetter(t *testing.T, id, reason string, age time.Duration) {
	t.Helper()
	var nid any
	if id != "" {
		nid = id
	}
	if _, err := f.db.Pool.Exec(context.Background(), `INSERT INTO dead_letters (notification_id, reason, token_count, created_at)
		VALUES ($1, $2, 1, now() - make_interval(secs => $3))`, nid, reason, age.Seconds()); err != nil {
		t.Fatal(err)
	}
}

// state is what a replay may change about a notification.
type state struct {
	Status          string
	ReplayCount     int
	Outbox          int // outbox rows
	Replays         int // replays rows
	DeadUnreplayed  int // dead letters not marked replayed
	LastReplayBy    string
	LastReplayCount int64
}

func (f *fixture) state(t *testing.T, id string) state {
	t.Helper()
	var s state
	err := f.db.Pool.QueryRow(context.Background(), `SELECT status, replay_count,
		(SELECT count(*) FROM outbox WHERE notification_id = n.id AND message_type <> 'notify.bus.v1.StatusEvent'),
		(SELECT count(*) FROM replays WHERE notification_id = n.id),
		(SELECT count(*) FROM dead_letters WHERE notification_id = n.id AND replayed_at IS NULL),
		coalesce((SELECT replayed_by FROM replays WHERE notification_id = n.id ORDER BY id DESC LIMIT 1), ''),
		coalesce((SELECT token_count FROM replays WHERE notification_id = n.id ORDER BY id DESC LIMIT 1), 0)
		FROM notifications n WHERE id = $1`, id).
		Scan(&s.Status, &s.ReplayCount, &s.Outbox, &s.Replays, &s.DeadUnreplayed, &s.LastReplayBy, &s.LastReplayCount)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func replayIDs(dryRun, force bool, ids ...string) *notifyv1.ReplayRequest {
	return &notifyv1.ReplayRequest{
		Selector: &notifyv1.ReplayRequest_NotificationIds{NotificationIds: &notifyv1.NotificationIDs{Ids: ids}},
		DryRun:   dryRun, Force: force,
	}
}

const (
	replayed  = notifyv1.ReplayOutcome_REPLAY_OUTCOME_REPLAYED
	inFlight  = notifyv1.ReplayOutcome_REPLAY_OUTCOME_SKIPPED_IN_FLIGHT
	delivered = notifyv1.ReplayOutcome_REPLAY_OUTCOME_SKIPPED_DELIVERED
	expired   = notifyv1.ReplayOutcome_REPLAY_OUTCOME_SKIPPED_EXPIRED
	notFound  = notifyv1.ReplayOutcome_REPLAY_OUTCOME_NOT_FOUND
)

func TestReplay(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	// ana has three active devices and one unregistered; bob has one.
	f.register(t, "ana", "ana-1", "tok-a")
	f.register(t, "ana", "ana-2", "tok-b")
	f.register(t, "ana", "ana-3", "tok-c")
	f.register(t, "ana", "ana-old", "tok-e")
	if _, err := f.dev.UnregisterDevice(context.Background(), &notifyv1.UnregisterDeviceRequest{DeviceId: "ana-old"}); err != nil {
		t.Fatal(err)
	}
	f.register(t, "bob", "bob-1", "tok-d")

	tests := []struct {
		name      string
		to        *notifyv1.Recipients
		status    string
		outcomes  map[string]string
		ttl       time.Duration // 0: the default 28 days
		force     bool
		want      notifyv1.ReplayOutcome
		wantCount int64
	}{
		{"failed tokens of active devices", toUsers("ana"), "failed",
			map[string]string{"tok-a": "delivered", "tok-b": "failed", "tok-c": "failed", "tok-e": "failed"}, 0, false, replayed, 2},
		{"devices registered since are sent too", toUsers("ana", "bob"), "failed",
			map[string]string{"tok-a": "delivered", "tok-b": "delivered", "tok-c": "failed"}, 0, false, replayed, 2},
		{"only inactive devices failed", toUsers("ana"), "failed",
			map[string]string{"tok-a": "delivered", "tok-b": "delivered", "tok-c": "invalid", "tok-e": "failed"}, 0, false, delivered, 0},
		{"delivered", toUsers("ana"), "delivered",
			map[string]string{"tok-a": "delivered", "tok-b": "delivered", "tok-c": "delivered"}, 0, false, delivered, 0},
		{"pending", toUsers("ana"), "pending", nil, 0, false, inFlight, 0},
		{"retrying", toUsers("ana"), "retrying",
			map[string]string{"tok-a": "delivered", "tok-b": "retrying", "tok-c": "failed"}, 0, false, inFlight, 0},
		{"retrying, forced: retrying tokens are sent too", toUsers("ana"), "retrying",
			map[string]string{"tok-a": "delivered", "tok-b": "retrying", "tok-c": "failed"}, 0, true, replayed, 2},
		{"only retrying tokens left, forced", toUsers("ana"), "retrying",
			map[string]string{"tok-a": "delivered", "tok-b": "retrying", "tok-c": "retrying"}, 0, true, replayed, 2},
		{"only retrying raw tokens left, forced", toTokens("x", "y"), "retrying",
			map[string]string{"x": "delivered", "y": "retrying"}, 0, true, replayed, 1},
		{"retrying, forced, every token delivered or inactive", toUsers("ana"), "retrying",
			map[string]string{"tok-a": "delivered", "tok-b": "invalid", "tok-c": "delivered", "tok-e": "retrying"}, 0, true, delivered, 0},
		{"pending, forced", toUsers("ana"), "pending", nil, 0, true, replayed, 3},
		{"TTL passed", toUsers("ana"), "failed", map[string]string{"tok-a": "failed"}, time.Millisecond, false, expired, 0},
		{"expired", toUsers("ana"), "expired", map[string]string{"tok-a": "expired"}, time.Millisecond, true, expired, 0},
		{"raw tokens: invalid ones are not sent again", toTokens("x", "y", "z", "w", "x"), "failed",
			map[string]string{"x": "delivered", "y": "invalid", "z": "failed"}, 0, false, replayed, 2},
		{"broadcast", toEveryone, "failed",
			map[string]string{"tok-a": "delivered", "tok-b": "delivered", "tok-e": "failed"}, 0, false, replayed, 2},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			id := f.publish(t, fmt.Sprintf("replay.case%d", i), tt.to, tt.ttl)
			if tt.outcomes != nil || tt.status != "pending" {
				f.settle(t, id, tt.status, tt.outcomes)
			}
			f.deadLetter(t, id, "retries_exhausted", 0)
			if tt.ttl > 0 {
				time.Sleep(2 * tt.ttl)
			}
			before := f.state(t, id)
			want := &notifyv1.ReplayResult{NotificationId: id, Outcome: tt.want, TokenCount: tt.wantCount}

			dry, err := f.admin.Replay(ctxOps, replayIDs(true, tt.force, id))
			if err != nil {
				t.Fatalf("dry run: %v", err)
			}
			if diff := cmp.Diff([]*notifyv1.ReplayResult{want}, dry.GetResults(), cmpProto); diff != "" || !dry.GetDryRun() {
				t.Errorf("dry run (dry_run=%v) results (-want +got):\n%s", dry.GetDryRun(), diff)
			}
			if diff := cmp.Diff(before, f.state(t, id)); diff != "" {
				t.Errorf("the dry run changed the database (-before +after):\n%s", diff)
			}

			resp, err := f.admin.Replay(ctxOps, replayIDs(false, tt.force, id))
			if err != nil {
				t.Fatalf("Replay: %v", err)
			}
			if diff := cmp.Diff([]*notifyv1.ReplayResult{want}, resp.GetResults(), cmpProto); diff != "" {
				t.Errorf("results (-want +got):\n%s", diff)
			}
			wantState := before
			if tt.want == replayed {
				wantState = state{Status: "pending", ReplayCount: 1, Outbox: before.Outbox + 1, Replays: 1,
					LastReplayBy: "ops", LastReplayCount: tt.wantCount}
			}
			if diff := cmp.Diff(wantState, f.state(t, id)); diff != "" {
				t.Errorf("database after Replay (-want +got):\n%s", diff)
			}

			// Replayed: it is in flight now, and a second replay leaves it alone.
			if tt.want == replayed && !tt.force {
				again, err := f.admin.Replay(ctxOps, replayIDs(false, false, id))
				if err != nil {
					t.Fatal(err)
				}
				if got := again.GetResults()[0].GetOutcome(); got != inFlight {
					t.Errorf("second replay = %v, want SKIPPED_IN_FLIGHT", got)
				}
				if diff := cmp.Diff(wantState, f.state(t, id)); diff != "" {
					t.Errorf("the second replay changed the database (-want +got):\n%s", diff)
				}
			}
		})
	}

	t.Run("unknown id", func(t *testing.T) {
		t.Parallel()
		id := "01890a5d-ac96-774b-bcce-b302099a8057"
		resp, err := f.admin.Replay(ctxOps, replayIDs(false, false, id))
		if err != nil {
			t.Fatal(err)
		}
		want := []*notifyv1.ReplayResult{{NotificationId: id, Outcome: notFound}}
		if diff := cmp.Diff(want, resp.GetResults(), cmpProto); diff != "" {
			t.Errorf("results (-want +got):\n%s", diff)
		}
	})
}

var cmpProto = cmp.Comparer(proto.Equal)

func TestReplayWritesTheSendTask(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.register(t, "ana", "ana-1", "tok-a")
	id := f.publish(t, "x", toUsers("ana"), 0)
	f.settle(t, id, "failed", map[string]string{"tok-a": "failed"})
	if _, err := f.admin.Replay(ctxOps, replayIDs(false, false, id)); err != nil {
		t.Fatal(err)
	}
	var key, typ string
	var body []byte
	if err := f.db.Pool.QueryRow(context.Background(), `SELECT routing_key, message_type, body FROM outbox
		WHERE notification_id = $1 AND message_type <> 'notify.bus.v1.StatusEvent' ORDER BY id DESC LIMIT 1`, id).Scan(&key, &typ, &body); err != nil {
		t.Fatal(err)
	}
	var task busv1.SendTask
	if err := proto.Unmarshal(body, &task); err != nil {
		t.Fatal(err)
	}
	if key != rabbit.SendKey || typ != "notify.bus.v1.SendTask" || task.GetNotificationId() != id || task.GetCause() != "replay" {
		t.Errorf("outbox row: %s %s %v; want a SendTask for %s with cause replay on %q", key, typ, &task, id, rabbit.SendKey)
	}
}

// TestForcedReplayTakesOverRetries: a forced replay of a retrying notification moves its
// retrying tokens to failed, counts included, so that the sender of the replay's task (a
// new generation) sends them; a replay that is not forced changes nothing.
func TestForcedReplayTakesOverRetries(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.register(t, "ana", "ana-1", "tok-a")
	f.register(t, "ana", "ana-2", "tok-b")
	f.register(t, "ana", "ana-3", "tok-c")
	id := f.publish(t, "x", toUsers("ana"), 0)
	f.settle(t, id, "retrying", map[string]string{"tok-a": "delivered", "tok-b": "retrying", "tok-c": "retrying"})
	ctx := context.Background()

	type counts struct{ Delivered, Retrying, Failed, FailedRows int }
	read := func() counts {
		t.Helper()
		var c counts
		if err := f.db.Pool.QueryRow(ctx, `SELECT delivered, retrying, failed,
			(SELECT count(*) FROM deliveries WHERE notification_id = n.id AND outcome = 'failed' AND dead_letter_generation IS NULL)
			FROM notifications n WHERE id = $1`, id).Scan(&c.Delivered, &c.Retrying, &c.Failed, &c.FailedRows); err != nil {
			t.Fatal(err)
		}
		return c
	}
	before := read()
	resp, err := f.admin.Replay(ctxOps, replayIDs(false, false, id))
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.GetResults()[0].GetOutcome(); got != inFlight {
		t.Errorf("replay without force = %v, want SKIPPED_IN_FLIGHT", got)
	}
	if diff := cmp.Diff(before, read()); diff != "" {
		t.Errorf("a replay without force changed the counts (-before +after):\n%s", diff)
	}

	resp, err = f.admin.Replay(ctxOps, replayIDs(false, true, id))
	if err != nil {
		t.Fatal(err)
	}
	want := []*notifyv1.ReplayResult{{NotificationId: id, Outcome: replayed, TokenCount: 2}}
	if diff := cmp.Diff(want, resp.GetResults(), cmpProto); diff != "" {
		t.Errorf("forced replay results (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(counts{Delivered: 1, Failed: 2, FailedRows: 2}, read()); diff != "" {
		t.Errorf("counts after the forced replay (-want +got):\n%s", diff)
	}

	// What the sender of the replay's task (generation 1) sends: the two tokens that waited.
	q, args, err := schema.Audience{Kind: schema.AudienceUsers, Targets: []string{"ana"}}.UnsettledPage(uuid.MustParse(id), 1, "", 10)
	if err != nil {
		t.Fatal(err)
	}
	rows, err := f.db.Pool.Query(ctx, q, args...)
	if err != nil {
		t.Fatal(err)
	}
	var tokens []string
	var key, device, user, token string
	var muted, unrecorded bool
	if _, err := pgx.ForEachRow(rows, []any{&key, &device, &user, &token, &muted, &unrecorded}, func() error {
		tokens = append(tokens, token)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"tok-b", "tok-c"}, tokens); diff != "" {
		t.Errorf("tokens the sender sends after the forced replay (-want +got):\n%s", diff)
	}
}

func TestConcurrentReplaysEnqueueOnce(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.register(t, "ana", "ana-1", "tok-a")
	id := f.publish(t, "x", toUsers("ana"), 0)
	f.settle(t, id, "failed", map[string]string{"tok-a": "failed"})

	const n = 8
	var wg sync.WaitGroup
	outcomes := make(chan notifyv1.ReplayOutcome, n)
	for range n {
		wg.Go(func() {
			resp, err := f.admin.Replay(ctxOps, replayIDs(false, false, id))
			if err != nil {
				t.Error(err)
				return
			}
			outcomes <- resp.GetResults()[0].GetOutcome()
		})
	}
	wg.Wait()
	close(outcomes)
	count := map[notifyv1.ReplayOutcome]int{}
	for o := range outcomes {
		count[o]++
	}
	if diff := cmp.Diff(map[notifyv1.ReplayOutcome]int{replayed: 1, inFlight: n - 1}, count); diff != "" {
		t.Errorf("outcomes of %d concurrent replays (-want +got):\n%s", n, diff)
	}
	if s := f.state(t, id); s.Outbox != 2 || s.ReplayCount != 1 {
		t.Errorf("after concurrent replays: %+v; want 2 outbox rows (publish, one replay) and replay_count 1", s)
	}
}

func TestReplayByDeadLetterFilter(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.register(t, "ana", "ana-1", "tok-a")
	var ids []string // oldest first
	for i := range 4 {
		id := f.publish(t, "x", toUsers("ana"), 0)
		f.settle(t, id, "failed", map[string]string{"tok-a": "failed"})
		ids = append(ids, id)
		_ = i
	}
	f.deadLetter(t, ids[0], "retries_exhausted", 3*time.Hour) // too old for the filter
	f.deadLetter(t, ids[1], "retries_exhausted", time.Minute)
	f.deadLetter(t, ids[1], "retries_exhausted", 2*time.Minute) // two for one notification
	f.deadLetter(t, ids[2], "permanent_error", time.Minute)     // another reason
	f.deadLetter(t, ids[3], "retries_exhausted", time.Minute)
	f.deadLetter(t, "", "undecodable", time.Minute) // no notification: never selected

	filter := &notifyv1.DeadLetterFilter{Reason: "retries_exhausted", StartTime: timestamppb.New(time.Now().Add(-time.Hour)),
		Replayed: proto.Bool(false)}
	var pages [][]string
	token := ""
	for {
		resp, err := f.admin.Replay(ctxOps, &notifyv1.ReplayRequest{
			Selector: &notifyv1.ReplayRequest_DeadLetters{DeadLetters: filter}, PageSize: 1, PageToken: token,
		})
		if err != nil {
			t.Fatal(err)
		}
		var page []string
		for _, r := range resp.GetResults() {
			if r.GetOutcome() != replayed {
				t.Errorf("%s: %v, want REPLAYED", r.GetNotificationId(), r.GetOutcome())
			}
			page = append(page, r.GetNotificationId())
		}
		pages = append(pages, page)
		if token = resp.GetNextPageToken(); token == "" {
			break
		}
		if len(pages) > 5 {
			t.Fatal("paging does not end")
		}
	}
	// Newest first; the last page may be empty when the previous one was full.
	want := [][]string{{ids[3]}, {ids[1]}}
	if len(pages) == 3 {
		want = append(want, nil)
	}
	if diff := cmp.Diff(want, pages); diff != "" {
		t.Errorf("pages (-want +got):\n%s", diff)
	}
	for i, wantUnreplayed := range []int{1, 0, 1, 0} {
		if s := f.state(t, ids[i]); s.DeadUnreplayed != wantUnreplayed {
			t.Errorf("notification %d: %d dead letters not marked replayed, want %d", i, s.DeadUnreplayed, wantUnreplayed)
		}
	}
	var by string
	if err := f.db.Pool.QueryRow(context.Background(), `SELECT replayed_by FROM dead_letters
		WHERE notification_id = $1 LIMIT 1`, ids[1]).Scan(&by); err != nil || by != "ops" {
		t.Errorf("replayed_by = %q (%v), want ops", by, err)
	}
}

func TestReplayRefusesBadRequests(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	many := make([]string, MaxReplayIDs+1)
	for i := range many {
		many[i] = fmt.Sprintf("01890a5d-ac96-774b-bcce-%012d", i)
	}
	const ok = "01890a5d-ac96-774b-bcce-b302099a8057"
	tests := []struct {
		name string
		req  *notifyv1.ReplayRequest
		want []string
	}{
		{"no selector", &notifyv1.ReplayRequest{}, []string{"selector"}},
		{"no ids", replayIDs(false, false), []string{"notification_ids.ids"}},
		{"not a uuid", replayIDs(false, false, ok, "nope"), []string{"notification_ids.ids[1]"}},
		{"repeated", replayIDs(false, false, ok, ok), []string{"notification_ids.ids[1]"}},
		{"too many", replayIDs(false, false, many...), []string{"notification_ids.ids"}},
		{"bad filter", &notifyv1.ReplayRequest{Selector: &notifyv1.ReplayRequest_DeadLetters{DeadLetters: &notifyv1.DeadLetterFilter{
			StartTime: timestamppb.New(time.Now()), EndTime: timestamppb.New(time.Now().Add(-time.Hour)),
		}}, PageToken: "x"}, []string{"dead_letters.end_time", "page_token"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := f.admin.Replay(ctxOps, tt.req)
			if diff := cmp.Diff(tt.want, badFields(t, err)); diff != "" {
				t.Errorf("fields (-want +got):\n%s", diff)
			}
		})
	}
}

func TestListNotifications(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	var ids []string // oldest first
	for i := range 7 {
		typ := "order.shipped"
		if i%2 == 1 {
			typ = "comment.created"
		}
		id := f.publish(t, typ, toTokens("t"), 0)
		if i < 3 {
			f.settle(t, id, "failed", map[string]string{"t": "failed"})
		}
		ids = append(ids, id)
	}
	// Spread creation times an hour apart, oldest first, so the time filter has something to cut.
	for i, id := range ids {
		if _, err := f.db.Pool.Exec(ctx, "UPDATE notifications SET created_at = now() - make_interval(hours => $2) WHERE id = $1",
			id, len(ids)-i); err != nil {
			t.Fatal(err)
		}
	}
	reverse := func(in ...string) []string {
		out := make([]string, len(in))
		for i, s := range in {
			out[len(in)-1-i] = s
		}
		return out
	}
	tests := []struct {
		name string
		req  *notifyv1.ListNotificationsRequest
		want []string
	}{
		{"all", &notifyv1.ListNotificationsRequest{}, reverse(ids...)},
		{"failed", &notifyv1.ListNotificationsRequest{Status: notifyv1.NotificationStatus_NOTIFICATION_STATUS_FAILED}, reverse(ids[:3]...)},
		{"by type", &notifyv1.ListNotificationsRequest{Type: "comment.created"}, []string{ids[5], ids[3], ids[1]}},
		{"status and type", &notifyv1.ListNotificationsRequest{Status: notifyv1.NotificationStatus_NOTIFICATION_STATUS_PENDING,
			Type: "order.shipped"}, []string{ids[6], ids[4]}},
		{"time range", &notifyv1.ListNotificationsRequest{StartTime: timestamppb.New(time.Now().Add(-4*time.Hour - time.Minute)),
			EndTime: timestamppb.New(time.Now().Add(-2*time.Hour + time.Minute))}, []string{ids[5], ids[4], ids[3]}},
	}
	for _, tt := range tests {
		for _, size := range []int32{0, 1, 2, 3} {
			t.Run(fmt.Sprintf("%s/page_size=%d", tt.name, size), func(t *testing.T) {
				t.Parallel()
				req := proto.Clone(tt.req).(*notifyv1.ListNotificationsRequest)
				req.PageSize = size
				var got []string
				for pages := 0; ; pages++ {
					resp, err := f.admin.ListNotifications(ctx, req)
					if err != nil {
						t.Fatal(err)
					}
					for _, n := range resp.GetNotifications() {
						got = append(got, n.GetId())
						if n.GetRequest() != nil || n.GetCounts() == nil || n.GetCaller() != "orders" {
							t.Errorf("listed notification %v: want counts and caller, no request", n)
						}
					}
					if req.PageToken = resp.GetNextPageToken(); req.PageToken == "" {
						break
					}
					if pages > 10 {
						t.Fatal("paging does not end")
					}
				}
				if diff := cmp.Diff(tt.want, got); diff != "" {
					t.Errorf("ids (-want +got):\n%s", diff)
				}
			})
		}
	}

	t.Run("bad requests", func(t *testing.T) {
		t.Parallel()
		_, err := f.admin.ListNotifications(ctx, &notifyv1.ListNotificationsRequest{Status: 42, PageToken: "!!"})
		if diff := cmp.Diff([]string{"status", "page_token"}, badFields(t, err)); diff != "" {
			t.Errorf("fields (-want +got):\n%s", diff)
		}
	})
}

func TestListDeadLetters(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	id := f.publish(t, "x", toTokens("t"), 0)
	f.deadLetter(t, id, "retries_exhausted", 3*time.Hour)
	f.deadLetter(t, id, "retries_exhausted", 2*time.Hour)
	f.deadLetter(t, id, "permanent_error", time.Hour)
	f.deadLetter(t, "", "undecodable", time.Minute)
	if _, err := f.db.Pool.Exec(ctx, `UPDATE dead_letters SET replayed_at = now(), replayed_by = 'ops'
		WHERE created_at < now() - interval '150 minutes'`); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		filter *notifyv1.DeadLetterFilter
		want   []string // reasons, newest first
	}{
		{"all", nil, []string{"undecodable", "permanent_error", "retries_exhausted", "retries_exhausted"}},
		{"by reason", &notifyv1.DeadLetterFilter{Reason: "retries_exhausted"}, []string{"retries_exhausted", "retries_exhausted"}},
		{"not replayed", &notifyv1.DeadLetterFilter{Replayed: proto.Bool(false)}, []string{"undecodable", "permanent_error", "retries_exhausted"}},
		{"replayed", &notifyv1.DeadLetterFilter{Replayed: proto.Bool(true)}, []string{"retries_exhausted"}},
		{"since 90 minutes", &notifyv1.DeadLetterFilter{StartTime: timestamppb.New(time.Now().Add(-90 * time.Minute))},
			[]string{"undecodable", "permanent_error"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			req := &notifyv1.ListDeadLettersRequest{Filter: tt.filter, PageSize: 1}
			var got []string
			for pages := 0; ; pages++ {
				resp, err := f.admin.ListDeadLetters(ctx, req)
				if err != nil {
					t.Fatal(err)
				}
				for _, d := range resp.GetDeadLetters() {
					got = append(got, d.GetReason())
					if (d.GetReplayTime() != nil) != (d.GetReplayedBy() == "ops") {
						t.Errorf("dead letter %d: replay time %v, replayed by %q", d.GetId(), d.GetReplayTime(), d.GetReplayedBy())
					}
				}
				if req.PageToken = resp.GetNextPageToken(); req.PageToken == "" {
					break
				}
				if pages > 10 {
					t.Fatal("paging does not end")
				}
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("reasons (-want +got):\n%s", diff)
			}
		})
	}
}

// forgetful records the names the admin service tells it to forget.
type forgetful struct {
	mu    sync.Mutex
	names []string
}

func (f *forgetful) Forget(name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.names = append(f.names, name)
}

func TestAPIKeyRPCs(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	cache := &forgetful{}
	f.admin = NewAdmin(f.db.Pool, discard, cache, nil)

	created, err := f.admin.CreateAPIKey(ctxOps, &notifyv1.CreateAPIKeyRequest{Name: "orders", Role: notifyv1.Role_ROLE_PUBLISHER})
	if err != nil {
		t.Fatal(err)
	}
	if created.GetSecret() == "" || created.GetKey().GetName() != "orders" || created.GetKey().GetRole() != notifyv1.Role_ROLE_PUBLISHER {
		t.Errorf("CreateAPIKey = %v", created)
	}
	_, err = f.admin.CreateAPIKey(ctxOps, &notifyv1.CreateAPIKeyRequest{Name: "orders", Role: notifyv1.Role_ROLE_ADMIN})
	if status.Code(err) != codes.AlreadyExists {
		t.Errorf("CreateAPIKey with a taken name: %v, want AlreadyExists", err)
	}
	_, err = f.admin.CreateAPIKey(ctxOps, &notifyv1.CreateAPIKeyRequest{Name: "no spaces"})
	if diff := cmp.Diff([]string{"name", "role"}, badFields(t, err)); diff != "" {
		t.Errorf("fields (-want +got):\n%s", diff)
	}

	revoked, err := f.admin.RevokeAPIKey(ctxOps, &notifyv1.RevokeAPIKeyRequest{Name: "orders"})
	if err != nil || !revoked.GetRevoked() {
		t.Fatalf("RevokeAPIKey = %v, %v", revoked, err)
	}
	if diff := cmp.Diff([]string{"orders"}, cache.names); diff != "" {
		t.Errorf("forgotten (-want +got):\n%s", diff)
	}
	if again, _ := f.admin.RevokeAPIKey(ctxOps, &notifyv1.RevokeAPIKeyRequest{Name: "orders"}); again.GetRevoked() {
		t.Error("revoking twice reported revoked=true")
	}
	// A revoked key's name is not free again; the answer says so (it was "an API key with
	// this name exists", of a key that keys list no longer showed).
	_, err = f.admin.CreateAPIKey(ctxOps, &notifyv1.CreateAPIKeyRequest{Name: "orders", Role: notifyv1.Role_ROLE_PUBLISHER})
	if want := "this name belongs to an existing or revoked API key; names are never reused"; status.Code(err) != codes.AlreadyExists ||
		status.Convert(err).Message() != want {
		t.Errorf("CreateAPIKey with a revoked key's name: %v, want AlreadyExists %q", err, want)
	}
	active, err := f.admin.ListAPIKeys(ctxOps, &notifyv1.ListAPIKeysRequest{})
	if err != nil || len(active.GetKeys()) != 0 {
		t.Errorf("ListAPIKeys = %v, %v; want none active", active, err)
	}
	all, err := f.admin.ListAPIKeys(ctxOps, &notifyv1.ListAPIKeysRequest{IncludeRevoked: true})
	if err != nil || len(all.GetKeys()) != 1 || all.GetKeys()[0].GetRevokeTime() == nil {
		t.Errorf("ListAPIKeys(include revoked) = %v, %v; want orders with a revoke time", all, err)
	}
}
