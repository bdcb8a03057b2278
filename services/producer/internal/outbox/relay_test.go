package outbox

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"notify/pkg/pgtest"
	"notify/pkg/rabbit"
	"notify/pkg/rabbit/rabbittest"
	"notify/pkg/schema"
	"notify/pkg/sendpack"
	"notify/pkg/testenv"
)

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

func insertRows(t *testing.T, db *pgtest.DB, n int) {
	t.Helper()
	if _, err := db.Pool.Exec(context.Background(), `INSERT INTO outbox (routing_key, message_type, body)
		SELECT 'send', 'notify.bus.v1.SendTask', convert_to('task ' || i, 'UTF8') FROM generate_series(1, $1) i`, n); err != nil {
		t.Fatal(err)
	}
}

func unpublished(t *testing.T, db *pgtest.DB) int {
	t.Helper()
	var n int
	if err := db.Pool.QueryRow(context.Background(), "SELECT count(*) FROM outbox WHERE published_at IS NULL").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// flakyPublisher fails every third message of each call.
type flakyPublisher struct {
	mu   sync.Mutex
	sent []rabbit.Message
}

func (p *flakyPublisher) Publish(_ context.Context, msgs ...rabbit.Message) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	pe := &rabbit.PublishError{Total: len(msgs)}
	for i, m := range msgs {
		if i%3 == 2 {
			pe.Failed = append(pe.Failed, rabbit.FailedMessage{Index: i, MessageID: m.MessageID, Err: rabbit.ErrNacked})
			continue
		}
		p.sent = append(p.sent, m)
	}
	if len(pe.Failed) > 0 {
		return pe
	}
	return nil
}

func TestRelayMarksOnlyConfirmedRows(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	insertRows(t, db, 9)
	pub := &flakyPublisher{}
	r := NewRelay(db.Pool, pub, discard, prometheus.NewRegistry(), Options{BatchSize: 100})

	n, err := r.RelayOnce(context.Background())
	if err != nil || n != 9 {
		t.Fatalf("RelayOnce = %d, %v; want 9 claimed", n, err)
	}
	if got := unpublished(t, db); got != 3 {
		t.Errorf("%d rows left unpublished, want the 3 whose publish failed", got)
	}
	if got := rowCount(t, db); got != 3 {
		t.Errorf("%d rows in the outbox, want only the 3 unpublished (published rows are deleted)", got)
	}
	// The next rounds retry exactly the failed rows.
	for unpublished(t, db) > 0 {
		if _, err := r.RelayOnce(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[string]int{}
	for _, m := range pub.sent {
		seen[m.MessageID]++
	}
	if len(seen) != 9 {
		t.Errorf("published %d distinct rows, want 9", len(seen))
	}
	for id, c := range seen {
		if c != 1 {
			t.Errorf("%s published %d times, want once", id, c)
		}
	}
}

func rowCount(t *testing.T, db *pgtest.DB) int {
	t.Helper()
	var n int
	if err := db.Pool.QueryRow(context.Background(), "SELECT count(*) FROM outbox").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestRetentionKeepsPublishedRows: with a Retention, published rows stay, marked, until
// housekeeping finds them older than it.
func TestRetentionKeepsPublishedRows(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	insertRows(t, db, 4)
	r := NewRelay(db.Pool, &recorder{}, discard, prometheus.NewRegistry(), Options{Retention: time.Minute})
	ctx := context.Background()
	if n, err := r.RelayOnce(ctx); err != nil || n != 4 {
		t.Fatalf("RelayOnce = %d, %v; want 4 claimed", n, err)
	}
	if u, all := unpublished(t, db), rowCount(t, db); u != 0 || all != 4 {
		t.Fatalf("%d unpublished of %d rows, want 4 rows kept, all published", u, all)
	}
	r.deletePublished(ctx)
	if got := rowCount(t, db); got != 4 {
		t.Errorf("housekeeping left %d rows published just now, want 4", got)
	}
	if _, err := db.Pool.Exec(ctx, "UPDATE outbox SET published_at = now() - interval '2 minutes' WHERE id IN (SELECT min(id) FROM outbox)"); err != nil {
		t.Fatal(err)
	}
	r.deletePublished(ctx)
	if got := rowCount(t, db); got != 3 {
		t.Errorf("housekeeping left %d rows, want 3 (the one older than the retention deleted)", got)
	}
}

type brokenPublisher struct{}

func (brokenPublisher) Publish(context.Context, ...rabbit.Message) error {
	return errors.New("connection refused")
}

func TestRelayKeepsRowsWhenTheBrokerIsDown(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	insertRows(t, db, 5)
	r := NewRelay(db.Pool, brokenPublisher{}, discard, prometheus.NewRegistry(), Options{})
	if _, err := r.RelayOnce(context.Background()); err == nil {
		t.Fatal("RelayOnce with the broker down succeeded")
	}
	if got := unpublished(t, db); got != 5 {
		t.Errorf("%d rows unpublished after a failed round, want all 5 kept", got)
	}
}

// TestRelayKeepsRowsWhenSettlingFails: the delete of the published rows and the commit go
// to the database in one batch; when either fails the round fails and rolls back, every row
// stays for a later round, and the connection goes back to the pool outside a transaction.
func TestRelayKeepsRowsWhenSettlingFails(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, trigger string }{
		{"delete", "CREATE TRIGGER refuse BEFORE DELETE ON outbox FOR EACH ROW EXECUTE FUNCTION refuse()"},
		{"commit", "CREATE CONSTRAINT TRIGGER refuse AFTER DELETE ON outbox DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse()"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			db := pgtest.New(t)
			ctx := context.Background()
			if _, err := db.Pool.Exec(ctx, `CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
				$$BEGIN RAISE EXCEPTION 'refused'; END$$`); err != nil {
				t.Fatal(err)
			}
			if _, err := db.Pool.Exec(ctx, tc.trigger); err != nil {
				t.Fatal(err)
			}
			insertRows(t, db, 5)
			pub := &recorder{}
			r := NewRelay(db.Pool, pub, discard, prometheus.NewRegistry(), Options{})
			if _, err := r.RelayOnce(ctx); err == nil || !strings.Contains(err.Error(), "refused") {
				t.Fatalf("RelayOnce with the %s refused = %v, want the refusal", tc.name, err)
			}
			if len(pub.sent) != 5 {
				t.Fatalf("published %d rows, want the 5 claimed", len(pub.sent))
			}
			if got := rowCount(t, db); got != 5 {
				t.Fatalf("%d rows in the outbox after a round whose %s failed, want all 5 kept", got, tc.name)
			}
			var open int
			if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
				WHERE datname = current_database() AND state LIKE 'idle in transaction%'`).Scan(&open); err != nil || open != 0 {
				t.Fatalf("%d connections left in a transaction (%v), want none", open, err)
			}
			if _, err := db.Pool.Exec(ctx, "DROP TRIGGER refuse ON outbox"); err != nil {
				t.Fatal(err)
			}
			if n, err := r.RelayOnce(ctx); err != nil || n != 5 {
				t.Fatalf("RelayOnce after the refusal ended = %d, %v; want the 5 rows claimed again", n, err)
			}
			if got := rowCount(t, db); got != 0 {
				t.Errorf("%d rows left after a round that succeeded, want none", got)
			}
		})
	}
}

// TestRelaysShareTheOutbox runs two relays (two producer replicas), each with overlapping
// rounds, one packing its rounds' send tasks and one not, against one outbox and a real
// broker with notify's topology: every task arrives once, in a pack on the packed send
// queue or alone on the send queue.
func TestRelaysShareTheOutbox(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	amqpURL := testenv.AMQPURL(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	topo := rabbittest.Topology(t, amqpURL, "outbox", rabbit.NewTopology("", nil))
	conn := rabbittest.StartConn(t, amqpURL, rabbit.ConnOptions{Name: topo.Name, Topology: &topo})

	const rows = 3000
	insertRows(t, db, rows)
	for i := range 2 {
		r := NewRelay(db.Pool, rabbit.NewPublisher(conn, topo.Exchange(), rabbit.PublisherOptions{}), discard,
			prometheus.NewRegistry(), Options{BatchSize: 200 + 100*i, PollInterval: 20 * time.Millisecond, Concurrency: 2 + i, PackSize: 32 * i})
		runRelay(t, r)
	}

	var mu sync.Mutex
	seen := map[string]int{}
	packs := 0
	got := make(chan struct{})
	count := func(_ context.Context, d *rabbit.Delivery) error {
		tasks := []*rabbit.Delivery{d}
		if d.Type == sendpack.Type {
			var err error
			if tasks, err = sendpack.Unpack(d); err != nil {
				t.Error(err)
				return nil
			}
		}
		mu.Lock()
		defer mu.Unlock()
		if d.Type == sendpack.Type {
			packs++
		}
		for _, task := range tasks {
			seen[task.MessageID]++
		}
		if len(seen) == rows {
			select {
			case <-got:
			default:
				close(got)
			}
		}
		return nil
	}
	for _, q := range []string{topo.SendQueue(), topo.PackedSendQueue()} {
		c := rabbit.NewConsumer(conn, q, count, rabbit.ConsumerOptions{Concurrency: 2, Prefetch: 128})
		go func() { _ = c.Run(ctx) }()
	}

	select {
	case <-got:
	case <-time.After(60 * time.Second):
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("only %d of %d rows arrived", len(seen), rows)
	}
	time.Sleep(200 * time.Millisecond) // let any duplicate arrive
	mu.Lock()
	defer mu.Unlock()
	for id, c := range seen {
		if c != 1 {
			t.Errorf("%s arrived %d times, want once", id, c)
		}
	}
	if packs == 0 {
		t.Error("no pack arrived: the packing relay sent every task alone")
	}
	if left := unpublished(t, db); left != 0 {
		t.Errorf("%d rows still unpublished", left)
	}
}

// TestWakeStartsARoundAtOnce: with polling an hour away, only Wake can explain a prompt
// round.
func TestWakeStartsARoundAtOnce(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	pub := &flakyPublisher{}
	r := NewRelay(db.Pool, pub, discard, prometheus.NewRegistry(), Options{PollInterval: time.Hour})
	runRelay(t, r)

	time.Sleep(100 * time.Millisecond) // the first round (at start) has found nothing
	insertRows(t, db, 2)               // index 0 and 1 of the round: the flaky publisher confirms both
	r.Wake()
	deadline := time.Now().Add(5 * time.Second)
	for unpublished(t, db) > 0 {
		if time.Now().After(deadline) {
			t.Fatal("rows still unpublished 5s after Wake")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestEnqueueSendWakesRelaysThroughNotify: a replay or re-drive committed by any replica
// (here: straight into the database) wakes the relay through LISTEN/NOTIFY.
func TestEnqueueSendWakesRelaysThroughNotify(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	r := NewRelay(db.Pool, &flakyPublisher{}, discard, prometheus.NewRegistry(), Options{PollInterval: time.Hour})
	runRelay(t, r)

	time.Sleep(300 * time.Millisecond) // the listener is up and the first round found nothing
	ctx := context.Background()
	if err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		return EnqueueSend(ctx, tx, uuid.New(), CauseReplay)
	}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for unpublished(t, db) > 0 {
		if time.Now().After(deadline) {
			t.Fatal("the enqueued row is still unpublished 5s after its commit")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// runRelay runs r until the test ends.
func runRelay(t *testing.T, r *Relay) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

// TestClaimPlanProbesTheNotification: with statistics taken while the outbox was empty (as
// after every drained backlog, until autovacuum analyzes again), the hold-back of status
// events still probes the notification's rows instead of reading every earlier row.
func TestClaimPlanProbesTheNotification(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	insertRows(t, db, 300)
	for _, sql := range []string{"DELETE FROM outbox", "ANALYZE outbox"} {
		if _, err := db.Pool.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	// A PublishBatch backlog: per transaction, 500 pending events, then their send tasks.
	if _, err := db.Pool.Exec(ctx, `
		WITH n AS (SELECT i, gen_random_uuid() AS id FROM generate_series(0, 49999) i)
		INSERT INTO outbox (notification_id, routing_key, message_type, body)
		SELECT id, k, t, '{}' FROM (
			SELECT i / 500 AS b, 0 AS o, id, 'pending.t' AS k, '`+schema.StatusEventType+`' AS t FROM n
			UNION ALL SELECT i / 500, 1, id, 'send', 'notify.bus.v1.SendTask' FROM n) r
		ORDER BY b, o, id`); err != nil {
		t.Fatal(err)
	}
	rows, err := db.Pool.Query(ctx, "EXPLAIN "+claimSQL, 500)
	if err != nil {
		t.Fatal(err)
	}
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	plan := strings.Join(lines, "\n")
	if !strings.Contains(plan, "Index Cond: (notification_id = o.notification_id)") || strings.Contains(plan, "Cond: (id < o.id)") {
		t.Errorf("the claim's hold-back does not probe by notification:\n%s", plan)
	}
}

// TestClaimWalksIndexesWithEmptyStatistics: the claim, planned under the relay's settings
// while outbox is empty and analyzed empty (as a queue mostly is), reads no table whole.
// Its plan is prepared once per connection and kept (pgx caches the statement, PostgreSQL
// its generic plan), so the plan made for an empty queue is the one a backlog meets: with
// sequential scans that read the backlog once, and once more per status event for its
// hold-back probe. Nor does it read every unpublished row and sort them (the plan a
// connection's first claims got, custom-planned for a backlog written after the outbox was
// analyzed empty: 9,015 buffers and 44 ms for 2,000 rows waiting, against 2,008 and 8 ms in
// outbox_ready's order).
func TestClaimWalksIndexesWithEmptyStatistics(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	if _, err := db.Pool.Exec(ctx, "ANALYZE outbox"); err != nil {
		t.Fatal(err)
	}
	t.Run("empty", func(t *testing.T) { claimPlanReadsNoTableWhole(t, db.Pool) })
	// A backlog as Publish writes it (an event, then its send task), half of it published,
	// and the final events of some of the rest.
	if _, err := db.Pool.Exec(ctx, `
		WITH n AS (SELECT i, gen_random_uuid() AS id FROM generate_series(1, 2000) i)
		INSERT INTO outbox (notification_id, routing_key, message_type, body)
		SELECT id, k, t, '' FROM (
			SELECT i, 0 AS o, id, 'pending.t' AS k, '`+schema.StatusEventType+`' AS t FROM n
			UNION ALL SELECT i, 1, id, 'send', 'notify.bus.v1.SendTask' FROM n) r
		ORDER BY i / 100, o, i`); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Pool.Exec(ctx, `DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT 2000)`); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Pool.Exec(ctx, `INSERT INTO outbox (notification_id, routing_key, message_type, body)
		SELECT notification_id, 'delivered.t', message_type, '' FROM outbox WHERE message_type = '`+schema.StatusEventType+`' LIMIT 500`); err != nil {
		t.Fatal(err)
	}
	t.Run("backlog", func(t *testing.T) { claimPlanReadsNoTableWhole(t, db.Pool) })
}

func claimPlanReadsNoTableWhole(t *testing.T, pool *pgxpool.Pool) {
	ctx := context.Background()
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, claimSettingsSQL); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, "EXPLAIN "+claimSQL, 500)
		if err != nil {
			return err
		}
		plan, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return err
		}
		for _, line := range plan {
			if strings.Contains(line, "Seq Scan") || strings.Contains(line, "Sort") {
				t.Errorf("the claim reads a table or an index whole:\n%s", strings.Join(plan, "\n"))
				break
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestNextDueProbesOutboxDue: the next due time, read once per round, is a probe of
// outbox_due under the relay's settings whatever outbox's statistics say: taken empty, or
// full of rows for now (none scheduled), as a queue's are. Planned for those, min(due_at)
// on its own read the whole table, and with sequential scans off walked another index.
func TestNextDueProbesOutboxDue(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	for _, stats := range []struct{ name, sql string }{
		{"empty", "ANALYZE outbox"},
		{"rows for now", `INSERT INTO outbox (notification_id, routing_key, message_type, body)
			SELECT gen_random_uuid(), 'send', 'notify.bus.v1.SendTask', '' FROM generate_series(1, 2000);
			ANALYZE outbox`},
	} {
		if _, err := db.Pool.Exec(ctx, stats.sql); err != nil {
			t.Fatal(err)
		}
		err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, claimSettingsSQL); err != nil {
				return err
			}
			rows, err := tx.Query(ctx, "EXPLAIN "+nextDueSQL)
			if err != nil {
				return err
			}
			plan, err := pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil {
				return err
			}
			if !strings.Contains(plan[1], "Index Only Scan using outbox_due") || len(plan) != 3 {
				t.Errorf("statistics %s: the next due time is not a probe of outbox_due:\n%s", stats.name, strings.Join(plan, "\n"))
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}
