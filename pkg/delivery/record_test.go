package delivery

import (
	"context"
	"encoding/json"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"notify/pkg/pgtest"
	"notify/pkg/schema"
)

// TestRecordManyInOneStatement: RecordMany writes a group of records of every kind in one
// statement, and each notification ends as if its records had been written one by one:
// counts moved by what each outcome replaced, the status set where a record is final or
// the sender is done with it (never back from cancelled), and one status event for each
// status that changed, carrying the new counts.
func TestRecordManyInOneStatement(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	store := NewStore(db.Pool)
	newNotification := func(status string) uuid.UUID {
		t.Helper()
		id := uuid.New()
		if _, err := db.Pool.Exec(ctx, `INSERT INTO notifications (id, caller, type, request, expires_at, status)
			VALUES ($1, 'test', 'order', '{}', now() + interval '1 hour', $2)`, id, status); err != nil {
			t.Fatal(err)
		}
		return id
	}
	out := func(token, outcome string) Outcome {
		return Outcome{Target: Target{Token: token, DeviceID: "dev-" + token, UserID: "u"}, Outcome: outcome, Attempts: 1}
	}

	small := newNotification(schema.StatusPending)     // one final chunk: delivered
	mixed := newNotification(schema.StatusPending)     // two chunks in the group, one final; a token in both
	working := newNotification(schema.StatusPending)   // a chunk of a large one still being sent: stays pending
	retried := newNotification(schema.StatusRetrying)  // the retrier's chunk: status from its counts
	nobody := newNotification(schema.StatusPending)    // a final chunk with no targets
	cancelled := newNotification(schema.StatusPending) // cancelled while in flight: stays cancelled

	// What the notifications held before: a retrying token of retried, and a first chunk
	// of cancelled, then cancelled.
	if _, err := store.RecordMany(ctx, []Record{
		{ID: retried, Outcomes: []Outcome{out("r1", schema.OutcomeRetrying), out("r2", schema.OutcomeRetrying)}},
		{ID: cancelled, Outcomes: []Outcome{out("c1", schema.OutcomeDelivered)}},
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Pool.Exec(ctx, "UPDATE notifications SET status = 'cancelled' WHERE id = $1", cancelled); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Pool.Exec(ctx, "DELETE FROM outbox"); err != nil {
		t.Fatal(err)
	}

	recs := []Record{
		{ID: small, Outcomes: []Outcome{out("s1", schema.OutcomeDelivered)}, Final: true},
		{ID: mixed, Outcomes: []Outcome{out("m1", schema.OutcomeRetrying), out("m2", schema.OutcomeDelivered)}},
		{ID: working, Outcomes: []Outcome{out("w1", schema.OutcomeDelivered)}},
		{ID: retried, Outcomes: []Outcome{out("r1", schema.OutcomeDelivered), out("r2", schema.OutcomeFailed)}},
		{ID: nobody, Final: true},
		{ID: cancelled, Outcomes: []Outcome{out("c2", schema.OutcomeDelivered)}, Final: true},
		// m1 again, later in the group: its last outcome counts, once.
		{ID: mixed, Outcomes: []Outcome{out("m1", schema.OutcomeInvalid), out("m3", schema.OutcomeExpired)}, Final: true},
	}
	statuses, err := store.RecordMany(ctx, recs)
	if err != nil {
		t.Fatal(err)
	}
	wantStatuses := []string{"delivered", "", "", "", "delivered", "cancelled", "expired"}
	if diff := cmp.Diff(wantStatuses, statuses); diff != "" {
		t.Errorf("statuses (-want +got):\n%s", diff)
	}

	type counts struct {
		Status                                                        string
		Total, Delivered, Invalid, Retrying, Failed, Expired, Skipped int64
	}
	want := map[uuid.UUID]counts{
		small:     {"delivered", 1, 1, 0, 0, 0, 0, 0},
		mixed:     {"expired", 3, 1, 1, 0, 0, 1, 0},
		working:   {"pending", 1, 1, 0, 0, 0, 0, 0},
		retried:   {"failed", 2, 1, 0, 0, 1, 0, 0},
		nobody:    {"delivered", 0, 0, 0, 0, 0, 0, 0},
		cancelled: {"cancelled", 2, 2, 0, 0, 0, 0, 0},
	}
	for id, w := range want {
		var c counts
		if err := db.Pool.QueryRow(ctx, `SELECT status, total, delivered, invalid, retrying, failed, expired, skipped
			FROM notifications WHERE id = $1`, id).Scan(&c.Status, &c.Total, &c.Delivered, &c.Invalid, &c.Retrying,
			&c.Failed, &c.Expired, &c.Skipped); err != nil {
			t.Fatal(err)
		}
		if c != w {
			t.Errorf("notification %s: %+v, want %+v", id, c, w)
		}
	}
	var m1 string
	if err := db.Pool.QueryRow(ctx, "SELECT outcome FROM deliveries WHERE notification_id = $1 AND token = 'm1'", mixed).
		Scan(&m1); err != nil || m1 != schema.OutcomeInvalid {
		t.Errorf("m1's outcome %q (%v), want its last one, invalid", m1, err)
	}

	// One event per changed status, with the counts after the change.
	rows, err := db.Pool.Query(ctx, `SELECT notification_id, routing_key, convert_from(body, 'UTF8') FROM outbox
		WHERE message_type = $1 ORDER BY id`, schema.StatusEventType)
	if err != nil {
		t.Fatal(err)
	}
	type event struct {
		RoutingKey string
		Delivered  string
	}
	got := map[uuid.UUID][]event{}
	for rows.Next() {
		var id uuid.UUID
		var key, body string
		if err := rows.Scan(&id, &key, &body); err != nil {
			t.Fatal(err)
		}
		var e struct {
			Counts struct {
				Delivered json.Number `json:"delivered"`
			} `json:"counts"`
		}
		if err := json.Unmarshal([]byte(body), &e); err != nil {
			t.Fatalf("event body %s: %v", body, err)
		}
		got[id] = append(got[id], event{key, e.Counts.Delivered.String()})
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	wantEvents := map[uuid.UUID][]event{
		small:   {{"delivered.order", "1"}},
		mixed:   {{"expired.order", "1"}},
		retried: {{"failed.order", "1"}},
		nobody:  {{"delivered.order", "0"}},
	}
	if diff := cmp.Diff(wantEvents, got); diff != "" {
		t.Errorf("status events (-want +got):\n%s", diff)
	}
}

// TestConcurrentRecordsOfOneTokenCountItOnce: records of the same token of one
// notification committed at the same time (a redelivered task beside the first one, a
// retry beside a late chunk) leave the counts adding up to the deliveries as they are: the
// token counted once, under the outcome that was written last.
func TestConcurrentRecordsOfOneTokenCountItOnce(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	store := NewStore(db.Pool)
	outcomes := []string{schema.OutcomeDelivered, schema.OutcomeRetrying, schema.OutcomeFailed, schema.OutcomeInvalid}
	for round := range 20 {
		id := uuid.New()
		if _, err := db.Pool.Exec(ctx, `INSERT INTO notifications (id, caller, type, request, expires_at, status)
			VALUES ($1, 'test', 'order', '{}', now() + interval '1 hour', 'pending')`, id); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		errs := make(chan error, len(outcomes))
		for _, o := range outcomes {
			wg.Go(func() {
				_, err := store.RecordMany(ctx, []Record{{ID: id, Final: true, Outcomes: []Outcome{
					{Target: Target{Token: "tok", DeviceID: "dev", UserID: "u"}, Outcome: o, Attempts: 1},
					{Target: Target{Token: "tok-" + o, DeviceID: "dev-" + o, UserID: "u"}, Outcome: o, Attempts: 1},
				}}})
				errs <- err
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		var total, delivered, retrying, failed, invalid int
		if err := db.Pool.QueryRow(ctx, `SELECT total, delivered, retrying, failed, invalid FROM notifications WHERE id = $1`, id).
			Scan(&total, &delivered, &retrying, &failed, &invalid); err != nil {
			t.Fatal(err)
		}
		got := map[string]int{}
		rows, err := db.Pool.Query(ctx, `SELECT outcome, count(*) FROM deliveries WHERE notification_id = $1 GROUP BY outcome`, id)
		if err != nil {
			t.Fatal(err)
		}
		var outcome string
		var n int
		if _, err := pgx.ForEachRow(rows, []any{&outcome, &n}, func() error { got[outcome] = n; return nil }); err != nil {
			t.Fatal(err)
		}
		counted := map[string]int{schema.OutcomeDelivered: delivered, schema.OutcomeRetrying: retrying,
			schema.OutcomeFailed: failed, schema.OutcomeInvalid: invalid}
		if total != 5 {
			t.Errorf("round %d: total %d, want 5 (four tokens of their own and one shared)", round, total)
		}
		for _, o := range outcomes {
			if counted[o] != got[o] {
				t.Errorf("round %d: %s counted %d, the deliveries hold %d", round, o, counted[o], got[o])
			}
		}
	}
}

// TestRecordOfAGoneNotificationWritesNothing: deliveries have no foreign key to their
// notification (migration 0017_a); a record for a notification that no longer exists (the
// retention job deleted it while a late task was in flight) writes none of its deliveries,
// answers an empty status, and does not keep the other records of its group from landing.
func TestRecordOfAGoneNotificationWritesNothing(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	store := NewStore(db.Pool)
	kept, gone := uuid.New(), uuid.New()
	if _, err := db.Pool.Exec(ctx, `INSERT INTO notifications (id, caller, type, request, expires_at)
		VALUES ($1, 'test', 'order', '{}', now() + interval '1 hour')`, kept); err != nil {
		t.Fatal(err)
	}
	out := []Outcome{{Target: Target{Token: "tok", DeviceID: "dev", UserID: "u"}, Outcome: schema.OutcomeDelivered, Attempts: 1}}
	statuses, err := store.RecordMany(ctx, []Record{{ID: gone, Outcomes: out, Final: true}, {ID: kept, Outcomes: out, Final: true}})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"", schema.StatusDelivered}, statuses); diff != "" {
		t.Errorf("statuses (-want +got):\n%s", diff)
	}
	rows, err := db.Pool.Query(ctx, `SELECT notification_id FROM deliveries`)
	if err != nil {
		t.Fatal(err)
	}
	got, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]uuid.UUID{kept}, got); diff != "" {
		t.Errorf("deliveries written for (-want +got):\n%s", diff)
	}
}
