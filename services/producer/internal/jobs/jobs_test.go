package jobs

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"

	"notify/pkg/pgtest"
	busv1 "notify/proto/gen/notify/bus/v1"
)

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

// TestReplicasNeverRunAJobTogether runs the same job in two runners (two producer
// replicas) on one database, as often as they can, and counts how many runs overlap.
func TestReplicasNeverRunAJobTogether(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	var running, maxRunning, runs atomic.Int64
	job := Job{
		Name: "exclusive", LockKey: 0x6e6f7469667900ff, Interval: time.Millisecond,
		Run: func(ctx context.Context, _ *pgx.Conn) error {
			n := running.Add(1)
			for {
				m := maxRunning.Load()
				if n <= m || maxRunning.CompareAndSwap(m, n) {
					break
				}
			}
			runs.Add(1)
			time.Sleep(5 * time.Millisecond)
			running.Add(-1)
			return nil
		},
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 2)
	for range 2 {
		r := NewRunner(db.Pool, discard, prometheus.NewRegistry(), job)
		go func() { done <- r.Run(ctx) }()
	}
	deadline := time.Now().Add(30 * time.Second)
	for runs.Load() < 50 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	for range 2 {
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}
	if runs.Load() < 50 {
		t.Fatalf("only %d runs in 30s", runs.Load())
	}
	if m := maxRunning.Load(); m != 1 {
		t.Errorf("at most %d runs of the job at once over %d runs, want 1", m, runs.Load())
	}
}

func TestRunOnceSkipsWhileAnotherReplicaHoldsTheLock(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	entered, release := make(chan struct{}), make(chan struct{})
	holder := Job{Name: "j", LockKey: 0x6e6f7469667900fe, Run: func(context.Context, *pgx.Conn) error {
		close(entered)
		<-release
		return nil
	}}
	var ran atomic.Bool
	other := holder
	other.Run = func(context.Context, *pgx.Conn) error { ran.Store(true); return nil }
	a := NewRunner(db.Pool, discard, prometheus.NewRegistry())
	b := NewRunner(db.Pool, discard, prometheus.NewRegistry())

	first := make(chan error, 1)
	go func() {
		_, err := a.RunOnce(ctx, holder)
		first <- err
	}()
	<-entered
	if got, err := b.RunOnce(ctx, other); err != nil || got || ran.Load() {
		t.Errorf("RunOnce while another replica runs the job = %v, %v (ran %v); want a skip", got, err, ran.Load())
	}
	close(release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if got, err := b.RunOnce(ctx, other); err != nil || !got || !ran.Load() {
		t.Errorf("RunOnce after the other replica finished = %v, %v; want it to run", got, err)
	}
}

func connect(t *testing.T, db *pgtest.DB) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), db.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func TestSweepStaleTokens(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	// Days since registration and since last seen; the sweep looks at the later of the two.
	devices := []struct {
		id               string
		registered, seen int
		active           bool
	}{
		{"fresh", 1, 1, true},
		{"old-but-seen", 400, 10, true},
		{"re-registered", 10, 400, true},
		{"stale-1", 300, 280, true},
		{"stale-2", 500, 271, true},
		{"stale-3", 271, 271, true},
		{"already-inactive", 500, 500, false},
	}
	for _, d := range devices {
		_, err := db.Pool.Exec(ctx, `INSERT INTO devices (device_id, user_id, token, platform, registered_at, last_seen_at,
			active, deactivated_at, deactivation_reason)
			VALUES ($1, 'u', 'tok-' || $1, 'android', now() - make_interval(days => $2), now() - make_interval(days => $3),
			$4, CASE WHEN $4 THEN NULL ELSE now() END, CASE WHEN $4 THEN NULL ELSE 'unregistered' END)`,
			d.id, d.registered, d.seen, d.active)
		if err != nil {
			t.Fatal(err)
		}
	}
	n, err := SweepStaleTokens(ctx, connect(t, db), 270*24*time.Hour, 2) // batches of 2: three statements
	if err != nil {
		t.Fatal(err)
	}
	if n != 3 {
		t.Errorf("deactivated %d devices, want 3", n)
	}
	rows, _ := db.Pool.Query(ctx, `SELECT device_id || ':' || coalesce(deactivation_reason, 'active') FROM devices ORDER BY device_id`)
	got, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"already-inactive:unregistered", "fresh:active", "old-but-seen:active", "re-registered:active",
		"stale-1:stale", "stale-2:stale", "stale-3:stale"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("devices (-want +got):\n%s", diff)
	}
}

func TestRedriveStuck(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	opts := RedriveOptions{After: 15 * time.Minute, MaxRetryDelay: 5 * time.Minute, Batch: 2}

	// Each notification: status, minutes since its last change, whether its TTL passed,
	// whether an outbox row for it is still unpublished, and its tokens' outcomes with the
	// minutes since each changed.
	type token struct {
		outcome string
		age     int
	}
	notifications := []struct {
		name      string
		status    string
		age       int
		past      bool
		unsent    bool
		tokens    map[string]token
		want      string // status afterwards
		wantTasks int    // redrive SendTasks written
		wantToks  map[string]string
	}{
		{"pending, recent", "pending", 5, false, false, nil, "pending", 0, nil},
		{"pending, stuck", "pending", 16, false, false, map[string]token{"a": {"delivered", 16}}, "pending", 1,
			map[string]string{"a": "delivered"}},
		{"pending, stuck, task not yet published", "pending", 60, false, true, nil, "pending", 0, nil},
		{"retrying, within the retry window", "retrying", 18, false, false, map[string]token{"a": {"retrying", 18}}, "retrying", 0,
			map[string]string{"a": "retrying"}},
		{"retrying, stuck", "retrying", 21, false, false,
			map[string]token{"a": {"retrying", 21}, "b": {"delivered", 30}, "c": {"failed", 30}}, "pending", 1,
			map[string]string{"a": "failed", "b": "delivered", "c": "failed"}},
		{"pending, stuck, retry still waiting", "pending", 16, false, false, map[string]token{"a": {"retrying", 16}}, "pending", 1,
			map[string]string{"a": "retrying"}},
		{"retrying, stuck, TTL passed", "retrying", 30, true, false,
			map[string]token{"a": {"retrying", 30}, "b": {"delivered", 30}}, "expired", 0,
			map[string]string{"a": "expired", "b": "delivered"}},
		{"failed is final", "failed", 60, false, false, map[string]token{"a": {"failed", 60}}, "failed", 0,
			map[string]string{"a": "failed"}},
	}
	ids := map[string]string{}
	for _, n := range notifications {
		var id string
		err := db.Pool.QueryRow(ctx, `INSERT INTO notifications (id, caller, type, status, request, expires_at, updated_at)
			VALUES (gen_random_uuid(), 'test', 't', $1, '{}', now() + CASE WHEN $2 THEN interval '-1 minute' ELSE interval '1 day' END,
			now() - make_interval(mins => $3)) RETURNING id`, n.status, n.past, n.age).Scan(&id)
		if err != nil {
			t.Fatal(err)
		}
		ids[n.name] = id
		published := "now()"
		if n.unsent {
			published = "NULL"
		}
		if _, err := db.Pool.Exec(ctx, `INSERT INTO outbox (notification_id, routing_key, message_type, body, published_at)
			VALUES ($1, 'send', 'notify.bus.v1.SendTask', '', `+published+`)`, id); err != nil {
			t.Fatal(err)
		}
		for tok, tk := range n.tokens {
			if _, err := db.Pool.Exec(ctx, `INSERT INTO deliveries (notification_id, token, outcome, updated_at)
				VALUES ($1, $2, $3, now() - make_interval(mins => $4))`, id, tok, tk.outcome, tk.age); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := db.Pool.Exec(ctx, `UPDATE notifications n SET
			total = (SELECT count(*) FROM deliveries d WHERE d.notification_id = n.id),
			delivered = (SELECT count(*) FROM deliveries d WHERE d.notification_id = n.id AND outcome = 'delivered'),
			retrying = (SELECT count(*) FROM deliveries d WHERE d.notification_id = n.id AND outcome = 'retrying'),
			failed = (SELECT count(*) FROM deliveries d WHERE d.notification_id = n.id AND outcome = 'failed')
			WHERE id = $1`, id); err != nil {
			t.Fatal(err)
		}
	}

	sent, expired, err := RedriveStuck(ctx, connect(t, db), opts)
	if err != nil {
		t.Fatal(err)
	}
	if sent != 3 || expired != 1 {
		t.Errorf("RedriveStuck = %d sent, %d expired; want 3 and 1", sent, expired)
	}
	for _, n := range notifications {
		t.Run(n.name, func(t *testing.T) {
			id := ids[n.name]
			var status string
			var tasks int
			var countsOK bool
			err := db.Pool.QueryRow(ctx, `SELECT status,
				-- re-drive tasks: the fixture's own outbox rows have empty bodies
				(SELECT count(*) FROM outbox WHERE notification_id = n.id AND published_at IS NULL AND routing_key = 'send'
					AND message_type = 'notify.bus.v1.SendTask' AND length(body) > 0),
				retrying = (SELECT count(*) FROM deliveries d WHERE d.notification_id = n.id AND outcome = 'retrying')
				AND failed = (SELECT count(*) FROM deliveries d WHERE d.notification_id = n.id AND outcome = 'failed')
				AND expired = (SELECT count(*) FROM deliveries d WHERE d.notification_id = n.id AND outcome = 'expired')
				FROM notifications n WHERE id = $1`, id).Scan(&status, &tasks, &countsOK)
			if err != nil {
				t.Fatal(err)
			}
			if status != n.want || tasks != n.wantTasks || !countsOK {
				t.Errorf("status %s, %d re-drive tasks, counts match deliveries: %v; want %s, %d, true", status, tasks, countsOK, n.want, n.wantTasks)
			}
			if n.wantTasks > 0 {
				var body []byte
				if err := db.Pool.QueryRow(ctx, "SELECT body FROM outbox WHERE notification_id = $1 AND length(body) > 0 AND message_type <> 'notify.bus.v1.StatusEvent'", id).Scan(&body); err != nil {
					t.Fatal(err)
				}
				var task busv1.SendTask
				if err := proto.Unmarshal(body, &task); err != nil || task.GetNotificationId() != id || task.GetCause() != "redrive" {
					t.Errorf("re-drive task %v (%v), want a SendTask for %s with cause redrive", &task, err, id)
				}
			}
			rows, _ := db.Pool.Query(ctx, "SELECT token, outcome FROM deliveries WHERE notification_id = $1", id)
			got := map[string]string{}
			var tok, outcome string
			if _, err := pgx.ForEachRow(rows, []any{&tok, &outcome}, func() error { got[tok] = outcome; return nil }); err != nil {
				t.Fatal(err)
			}
			want := n.wantToks
			if want == nil {
				want = map[string]string{}
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("token outcomes (-want +got):\n%s", diff)
			}
		})
	}

	// Re-driven notifications are fresh again: a second pass finds nothing.
	if sent, expired, err := RedriveStuck(ctx, connect(t, db), opts); err != nil || sent+expired != 0 {
		t.Errorf("second RedriveStuck = %d, %d, %v; want nothing", sent, expired, err)
	}
}

// TestRunnerExportsIntervals: notify_job_interval_seconds carries each job's configured
// interval, which NotifyJobNotSucceeding's staleness threshold is relative to.
func TestRunnerExportsIntervals(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	NewRunner(nil, discard, reg,
		Job{Name: "stale_tokens", Interval: 6 * time.Hour},
		Job{Name: "redrive", Interval: time.Minute})
	const want = `
# HELP notify_job_interval_seconds The configured time between two attempts to run the job, by job name.
# TYPE notify_job_interval_seconds gauge
notify_job_interval_seconds{name="redrive"} 60
notify_job_interval_seconds{name="stale_tokens"} 21600
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "notify_job_interval_seconds"); err != nil {
		t.Error(err)
	}
}
