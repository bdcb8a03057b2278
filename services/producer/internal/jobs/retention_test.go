package jobs

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"notify/pkg/pgtest"
)

// TestRetentionDeletesOnlyWhatIsOldFinalAndUnreplayable backdates notifications of every
// kind around a 30-day retention and runs the job with batches of 2 rows, so every table
// takes several statements and the walks step over rows they keep.
func TestRetentionDeletesOnlyWhatIsOldFinalAndUnreplayable(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	exec := func(sql string, args ...any) {
		t.Helper()
		if _, err := db.Pool.Exec(ctx, sql, args...); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	// notification inserts one created daysAgo with a TTL of ttlDays, with tokens
	// deliveries, a replay and a dead letter (alerted) as old as the notification.
	notification := func(name, status string, daysAgo, ttlDays, tokens int) uuid.UUID {
		t.Helper()
		id := uuid.Must(uuid.NewV7())
		exec(`INSERT INTO notifications (id, caller, type, status, request, created_at, updated_at, expires_at, total)
			VALUES ($1, 'c', $2, $3, '{}', now() - make_interval(days => $4), now() - make_interval(days => $4),
			now() - make_interval(days => $4) + make_interval(days => $5), $6)`, id, name, status, daysAgo, ttlDays, tokens)
		exec(`INSERT INTO deliveries (notification_id, token, outcome)
			SELECT $1, 'tok-' || i, 'delivered' FROM generate_series(1, $2) i`, id, tokens)
		exec(`INSERT INTO replays (notification_id, replayed_by, token_count, created_at)
			VALUES ($1, 'ops', 1, now() - make_interval(days => $2))`, id, daysAgo)
		exec(`INSERT INTO dead_letters (notification_id, reason, created_at, alerted_at)
			VALUES ($1, $2, now() - make_interval(days => $3), now())`, id, name, daysAgo)
		return id
	}
	const tokens = 5
	gone := map[string]bool{}
	for name, n := range map[string]struct {
		status       string
		daysAgo, ttl int
		deleted      bool
	}{
		"delivered-old":        {"delivered", 40, 1, true},
		"failed-old":           {"failed", 45, 28, true},
		"expired-old":          {"expired", 31, 1, true},
		"delivered-oldest":     {"delivered", 400, 1, true},
		"pending-old":          {"pending", 42, 1, false},
		"retrying-old":         {"retrying", 41, 1, false},
		"failed-young":         {"failed", 29, 1, false},
		"delivered-young":      {"delivered", 1, 1, false},
		"failed-old-ttl-lasts": {"failed", 35, 60, false}, // replayable until its TTL passes
		"cancelled-old":        {"cancelled", 44, 1, true},
		"cancelled-young":      {"cancelled", 3, 1, false},
		"scheduled-old":        {"scheduled", 33, 60, false}, // due later: kept whatever its age
	} {
		notification(name, n.status, n.daysAgo, n.ttl, tokens)
		gone[name] = n.deleted
	}
	// Dead letters with no notification kept, by their own age.
	exec(`INSERT INTO dead_letters (notification_id, reason, created_at, alerted_at) VALUES
		(NULL, 'poison-old', now() - interval '31 days', now()),
		(NULL, 'poison-young', now() - interval '2 days', now()),
		(NULL, 'poison-old-unalerted', now() - interval '50 days', NULL),
		($1, 'unknown-id-old', now() - interval '60 days', now())`, uuid.Must(uuid.NewV7()))
	gone["poison-old"], gone["poison-young"], gone["poison-old-unalerted"], gone["unknown-id-old"] = true, false, false, true
	// A dead letter younger than the retention whose notification goes: it stays, by its
	// own age.
	id := notification("delivered-old-young-dl", "delivered", 40, 1, tokens)
	exec(`UPDATE dead_letters SET created_at = now() - interval '1 day' WHERE notification_id = $1`, id)
	gone["delivered-old-young-dl"] = true

	reg := prometheus.NewRegistry()
	job := Retention(RetentionOptions{After: 30 * 24 * time.Hour, Batch: 2}, time.Hour, discard, reg)
	runner := NewRunner(db.Pool, discard, prometheus.NewRegistry(), job)
	if ran, err := runner.RunOnce(ctx, job); err != nil || !ran {
		t.Fatalf("RunOnce = %v, %v", ran, err)
	}

	rows, _ := db.Pool.Query(ctx, `SELECT type FROM notifications ORDER BY type`)
	gotNotifications, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	rows, _ = db.Pool.Query(ctx, `SELECT reason FROM dead_letters ORDER BY reason`)
	gotDeadLetters, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	var wantNotifications, wantDeadLetters []string
	for name, deleted := range gone {
		isNotification := name != "poison-old" && name != "poison-young" && name != "poison-old-unalerted" && name != "unknown-id-old"
		if isNotification && !deleted {
			wantNotifications = append(wantNotifications, name)
		}
		if !deleted || name == "delivered-old-young-dl" {
			wantDeadLetters = append(wantDeadLetters, name)
		}
	}
	sorted := cmpopts.SortSlices(func(a, b string) bool { return a < b })
	if diff := cmp.Diff(wantNotifications, gotNotifications, sorted); diff != "" {
		t.Errorf("notifications kept (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(wantDeadLetters, gotDeadLetters, sorted); diff != "" {
		t.Errorf("dead letters kept (-want +got):\n%s", diff)
	}
	var orphans int
	if err := db.Pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM deliveries d WHERE NOT EXISTS (SELECT 1 FROM notifications n WHERE n.id = d.notification_id))
		+ (SELECT count(*) FROM replays r WHERE NOT EXISTS (SELECT 1 FROM notifications n WHERE n.id = r.notification_id))`).Scan(&orphans); err != nil {
		t.Fatal(err)
	}
	if orphans != 0 {
		t.Errorf("%d deliveries or replays left without their notification", orphans)
	}
	var keptDeliveries int
	if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM deliveries`).Scan(&keptDeliveries); err != nil {
		t.Fatal(err)
	}
	if want := len(wantNotifications) * tokens; keptDeliveries != want {
		t.Errorf("%d deliveries kept, want %d (those of the kept notifications)", keptDeliveries, want)
	}

	deletedNotifications := 6 // delivered-old, failed-old, expired-old, delivered-oldest, cancelled-old, delivered-old-young-dl
	want := map[string]float64{
		"notifications": float64(deletedNotifications),
		"deliveries":    float64(deletedNotifications * tokens),
		"replays":       float64(deletedNotifications),
		"dead_letters":  7, // the first four notifications', cancelled-old's, poison-old, unknown-id-old
	}
	got := retentionCounts(t, reg)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("notify_retention_deleted_rows_total (-want +got):\n%s", diff)
	}

	// A second run finds nothing more.
	conn := connect(t, db)
	d, err := DeleteExpired(ctx, conn, RetentionOptions{After: 30 * 24 * time.Hour, Batch: 2})
	if err != nil || d != (Deleted{}) {
		t.Errorf("second run deleted %+v, %v; want nothing", d, err)
	}
}

// retentionCounts reads notify_retention_deleted_rows_total by table from reg.
func retentionCounts(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, f := range families {
		if f.GetName() != "notify_retention_deleted_rows_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "table" {
					out[l.GetValue()] = m.GetCounter().GetValue()
				}
			}
		}
	}
	return out
}

// TestRetentionDeletesDeliveriesRecordedDuringTheRun: deliveries have no foreign key
// (migration 0017_a), so the job itself must leave no delivery without its notification. A
// record that holds the notification's lock (as delivery.Store.RecordMany does) while the
// job has already deleted the deliveries it saw commits one more; the job's last
// transaction waits for that lock, then deletes the notification with that delivery too.
func TestRetentionDeletesDeliveriesRecordedDuringTheRun(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	id := uuid.Must(uuid.NewV7())
	if _, err := db.Pool.Exec(ctx, `
		WITH n AS (INSERT INTO notifications (id, caller, type, status, request, created_at, updated_at, expires_at)
			VALUES ($1, 'c', 't', 'delivered', '{}', now() - interval '40 days', now() - interval '40 days', now() - interval '39 days'))
		INSERT INTO deliveries (notification_id, token, outcome) SELECT $1, 'tok-' || i, 'delivered' FROM generate_series(1, 3) i`, id); err != nil {
		t.Fatal(err)
	}
	recorder, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer recorder.Rollback(ctx) //nolint:errcheck // committed below
	if _, err := recorder.Exec(ctx, `SELECT 1 FROM notifications WHERE id = $1 FOR NO KEY UPDATE`, id); err != nil {
		t.Fatal(err)
	}
	if _, err := recorder.Exec(ctx, `INSERT INTO deliveries (notification_id, token, outcome) VALUES ($1, 'late', 'delivered')`, id); err != nil {
		t.Fatal(err)
	}

	conn := connect(t, db)
	type result struct {
		d   Deleted
		err error
	}
	done := make(chan result, 1)
	go func() {
		d, err := DeleteExpired(ctx, conn, RetentionOptions{After: 30 * 24 * time.Hour, Batch: 100})
		done <- result{d, err}
	}()
	// Wait until the job waits for the recorder's lock.
	for deadline := time.Now().Add(time.Minute); ; {
		var waiting bool
		if err := db.Pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%FOR UPDATE%')`).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if waiting {
			break
		}
		select {
		case r := <-done:
			t.Fatalf("the job ended (%+v, %v) without waiting for the recorder's lock", r.d, r.err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("the job never waited for the recorder's lock")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := recorder.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if want := (Deleted{Notifications: 1, Deliveries: 4}); r.d != want {
		t.Errorf("deleted %+v, want %+v", r.d, want)
	}
	var left int
	if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM deliveries`).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left != 0 {
		t.Errorf("%d deliveries left without their notification", left)
	}
}
