package schema_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5"

	"github.com/jackc/pgx/v5/pgxpool"

	"notify/pkg/pgtest"
	"notify/pkg/schema"
)

// logBuffer is a goroutine-safe log destination a test can read.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func versions(t *testing.T, db *pgtest.DB) []string {
	t.Helper()
	rows, _ := db.Pool.Query(context.Background(), "SELECT version FROM schema_migrations ORDER BY version")
	got, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func knownVersions(t *testing.T) []string {
	t.Helper()
	ms, err := schema.Migrations()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range ms {
		out = append(out, m.Version)
	}
	return out
}

func indexValid(t *testing.T, db *pgtest.DB, name string) (exists, valid bool) {
	t.Helper()
	err := db.Pool.QueryRow(context.Background(),
		"SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)", name).Scan(&valid)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, false
	}
	if err != nil {
		t.Fatal(err)
	}
	return true, valid
}

// TestUpgradeFromTheFirstRunner migrates a database the way the first runner did (0001 to
// 0004, each in a transaction, recorded in its schema_migrations), then runs today's
// Migrate on it: only the newer migrations are applied, and the database ends exactly like
// a fresh one.
func TestUpgradeFromTheFirstRunner(t *testing.T) {
	t.Parallel()
	db := pgtest.NewEmpty(t)
	ctx := context.Background()
	ms, err := schema.Migrations()
	if err != nil {
		t.Fatal(err)
	}
	firstRunner := []string{"0001_init", "0002_admin_jobs", "0003_deliveries_undelivered_index", "0004_outbox_wake_in_process"}
	if _, err := db.Pool.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version    text PRIMARY KEY,
		applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		t.Fatal(err)
	}
	for i, v := range firstRunner {
		if ms[i].Version != v {
			t.Fatalf("migration %d is %s, want %s: the embedded history was rewritten", i, ms[i].Version, v)
		}
		err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, ms[i].SQL); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, "INSERT INTO schema_migrations (version) VALUES ($1)", v)
			return err
		})
		if err != nil {
			t.Fatalf("apply %s as the first runner did: %v", v, err)
		}
	}

	n, err := schema.Migrate(ctx, db.Pool, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("Migrate on a database of the first runner: %v", err)
	}
	if want := len(ms) - len(firstRunner); n != want {
		t.Errorf("Migrate applied %d migrations, want %d", n, want)
	}
	if diff := cmp.Diff(knownVersions(t), versions(t, db)); diff != "" {
		t.Errorf("schema_migrations (-want +got):\n%s", diff)
	}
	if exists, valid := indexValid(t, db, "notifications_retention"); !exists || !valid {
		t.Errorf("notifications_retention exists=%v valid=%v, want a valid index", exists, valid)
	}
	if err := schema.Check(ctx, db.Pool); err != nil {
		t.Errorf("Check after the upgrade: %v", err)
	}
}

// TestMigrateRebuildsAnIndexLeftInvalid interrupts the CREATE INDEX CONCURRENTLY of the
// retention index the way a crash or a timeout does, which leaves an INVALID index, and
// checks that the next Migrate replaces it with a valid one.
func TestMigrateRebuildsAnIndexLeftInvalid(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	const version, index = "0005_notifications_retention_index", "notifications_retention"
	if _, err := db.Pool.Exec(ctx, "DROP INDEX "+index); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Pool.Exec(ctx, "DELETE FROM schema_migrations WHERE version = $1", version); err != nil {
		t.Fatal(err)
	}

	// A writer's open transaction makes CREATE INDEX CONCURRENTLY wait after it has
	// committed the (still invalid) index to the catalog; its statement timeout then ends
	// it there.
	writer, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := writer.Exec(ctx, `INSERT INTO notifications (id, caller, type, request, expires_at)
		VALUES (gen_random_uuid(), 'c', 't', '{}', now())`); err != nil {
		t.Fatal(err)
	}
	builder, err := db.Pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = builder.Exec(ctx, "SET statement_timeout = '300ms'")
	if err == nil {
		_, err = builder.Exec(ctx, `CREATE INDEX CONCURRENTLY `+index+` ON notifications (created_at, id)
			INCLUDE (expires_at) WHERE status IN ('delivered', 'failed', 'expired')`)
	}
	if err == nil {
		t.Fatal("CREATE INDEX CONCURRENTLY finished despite the open writer; the test cannot interrupt it")
	}
	_, _ = builder.Exec(ctx, "RESET statement_timeout")
	builder.Release()
	if err := writer.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if exists, valid := indexValid(t, db, index); !exists || valid {
		t.Fatalf("after the interrupted build: exists=%v valid=%v, want an INVALID index", exists, valid)
	}

	var logs logBuffer
	n, err := schema.Migrate(ctx, db.Pool, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil || n != 1 {
		t.Fatalf("Migrate = %d, %v; want 1, nil", n, err)
	}
	if exists, valid := indexValid(t, db, index); !exists || !valid {
		t.Errorf("after Migrate: exists=%v valid=%v, want a valid index", exists, valid)
	}
	if !strings.Contains(logs.String(), "INVALID") {
		t.Errorf("Migrate did not log that it dropped the invalid index; logs:\n%s", logs.String())
	}
	if diff := cmp.Diff(knownVersions(t), versions(t, db)); diff != "" {
		t.Errorf("schema_migrations (-want +got):\n%s", diff)
	}
}

func TestNewerSchemaIsRefused(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	const future = "9000_from_a_newer_release"
	if _, err := db.Pool.Exec(ctx, "INSERT INTO schema_migrations (version) VALUES ($1)", future); err != nil {
		t.Fatal(err)
	}
	check := func(what string, err error) {
		t.Helper()
		var newer *schema.NewerError
		if !errors.As(err, &newer) {
			t.Fatalf("%s = %v, want a *schema.NewerError", what, err)
		}
		if newer.Database != future || newer.Binary != schema.Latest() {
			t.Errorf("%s: %+v, want database %s and binary %s", what, newer, future, schema.Latest())
		}
		for _, v := range []string{future, schema.Latest()} {
			if !strings.Contains(err.Error(), v) {
				t.Errorf("%s: %q does not name version %s", what, err, v)
			}
		}
	}
	_, err := schema.Migrate(ctx, db.Pool, slog.New(slog.DiscardHandler))
	check("Migrate", err)
	check("Check", schema.Check(ctx, db.Pool))
	waitCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	check("Wait", schema.Wait(waitCtx, db.Pool, slog.New(slog.DiscardHandler), 10*time.Millisecond))
}

func TestStatusAndWaitOnAnEmptyDatabase(t *testing.T) {
	t.Parallel()
	db := pgtest.NewEmpty(t)
	ctx := context.Background()

	st, err := schema.ReadStatus(ctx, db.Pool)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Applied) != 0 || len(st.Pending) != len(knownVersions(t)) || st.Current() != "" {
		t.Errorf("status of an empty database: %d applied, %d pending, current %q; want 0, %d, \"\"",
			len(st.Applied), len(st.Pending), st.Current(), len(knownVersions(t)))
	}
	if err := st.Err(); !errors.Is(err, schema.ErrPending) {
		t.Errorf("Err() = %v, want ErrPending", err)
	}

	var logs logBuffer
	waitCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	waited := make(chan error, 1)
	go func() {
		waited <- schema.Wait(waitCtx, db.Pool, slog.New(slog.NewTextHandler(&logs, nil)), 10*time.Millisecond)
	}()
	for !strings.Contains(logs.String(), "waiting for the database schema") {
		select {
		case err := <-waited:
			t.Fatalf("Wait returned %v on an empty database, want it to wait", err)
		case <-time.After(10 * time.Millisecond):
		}
	}
	if _, err := schema.Migrate(ctx, db.Pool, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	if err := <-waited; err != nil {
		t.Fatalf("Wait after Migrate: %v", err)
	}

	st, err = schema.ReadStatus(ctx, db.Pool)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Pending) != 0 || st.Current() != schema.Latest() || st.Err() != nil {
		t.Errorf("status after Migrate: %d pending, current %q, err %v; want 0, %q, nil",
			len(st.Pending), st.Current(), st.Err(), schema.Latest())
	}
}

func TestStatementsOfANoTransactionMigration(t *testing.T) {
	t.Parallel()
	m := schema.Migration{SQL: `-- notify:no-transaction
-- a comment; with a semicolon
CREATE INDEX CONCURRENTLY IF NOT EXISTS a
    ON t (x);

CREATE INDEX CONCURRENTLY IF NOT EXISTS b ON t (y)
    WHERE y > 0;
`}
	want := []string{"CREATE INDEX CONCURRENTLY IF NOT EXISTS a\n    ON t (x);", "CREATE INDEX CONCURRENTLY IF NOT EXISTS b ON t (y)\n    WHERE y > 0;"}
	if diff := cmp.Diff(want, m.Statements()); diff != "" {
		t.Errorf("Statements (-want +got):\n%s", diff)
	}
	ms, err := schema.Migrations()
	if err != nil {
		t.Fatal(err)
	}
	var noTx []string
	for _, m := range ms {
		if m.NoTransaction {
			noTx = append(noTx, m.Version)
		}
	}
	if diff := cmp.Diff([]string{"0005_notifications_retention_index", "0007_a_devices_user_index", "0015_devices_per_app", "0017_b_notifications_status_index_partial"}, noTx); diff != "" {
		t.Errorf("no-transaction migrations (-want +got):\n%s", diff)
	}
}

func TestWaitThen(t *testing.T) {
	t.Parallel()
	discard := slog.New(slog.DiscardHandler)
	ranWith := func(ctx context.Context, pool *pgxpool.Pool) (bool, error) {
		ran := false
		err := schema.WaitThen(ctx, pool, discard, func(context.Context) error { ran = true; return errors.New("ran") })
		return ran, err
	}

	// An empty database: WaitThen waits, and a ctx that ends meanwhile is a normal stop.
	empty := pgtest.NewEmpty(t)
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	if ran, err := ranWith(ctx, empty.Pool); ran || err != nil {
		t.Errorf("empty database, ctx ended: ran %v, err %v; want not run, nil", ran, err)
	}

	// A migrated database: run runs and its error is returned.
	migrated := pgtest.New(t)
	if ran, err := ranWith(t.Context(), migrated.Pool); !ran || err == nil || err.Error() != "ran" {
		t.Errorf("migrated database: ran %v, err %v; want run, its error", ran, err)
	}

	// A Gate's Check says what it waits for (a service's /readyz said only "consumer: not
	// consuming notify.send" during an upgrade), and is nil once run runs.
	var gate schema.Gate
	if err := gate.Check(t.Context()); err == nil {
		t.Error("Gate.Check before any wait = nil, want not ready")
	}
	ctx, cancel = context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	_ = gate.WaitThen(ctx, empty.Pool, discard, func(context.Context) error { return nil })
	if err := gate.Check(t.Context()); err == nil || !strings.Contains(err.Error(), "waiting for the database schema") ||
		!strings.Contains(err.Error(), schema.Latest()) {
		t.Errorf("Gate.Check on an empty database = %v, want it waiting for %s", err, schema.Latest())
	}
	checked := errors.New("run not called")
	_ = gate.WaitThen(t.Context(), migrated.Pool, discard, func(ctx context.Context) error { checked = gate.Check(ctx); return nil })
	if checked != nil {
		t.Errorf("Gate.Check once the schema is ready = %v, want nil", checked)
	}
}

// TestMigrationLockWaitDoesNotStopWriters leaves a transaction open on deliveries, as a
// forgotten psql session would, while a migration that alters deliveries is pending. An
// ALTER TABLE waiting for that transaction would queue every later writer behind it; the
// migration must instead give up its wait after MigrationLockTimeout, name the transaction,
// let writers through, and apply once the transaction ends.
func TestMigrationLockWaitDoesNotStopWriters(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	const version = "0019_deliveries_dead_letter_generation"
	if _, err := db.Pool.Exec(ctx, "ALTER TABLE deliveries DROP COLUMN dead_letter_generation"); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Pool.Exec(ctx, "DELETE FROM schema_migrations WHERE version = $1", version); err != nil {
		t.Fatal(err)
	}

	blocker, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = blocker.Rollback(ctx) }()
	var blockerPID int
	if err := blocker.QueryRow(ctx, "SELECT pg_backend_pid() FROM (SELECT count(*) FROM deliveries) d").Scan(&blockerPID); err != nil {
		t.Fatal(err)
	}

	type result struct {
		n   int
		err error
	}
	var logs logBuffer
	done := make(chan result, 1)
	go func() {
		n, err := schema.Migrate(ctx, db.Pool, slog.New(slog.NewTextHandler(&logs, nil)))
		done <- result{n, err}
	}()
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(logs.String(), "waits for a table lock"); {
		if time.Now().After(deadline) {
			t.Fatalf("Migrate logged no lock wait within 30 s; logs:\n%s", logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if want := fmt.Sprintf("oldest_transaction_pid=%d", blockerPID); !strings.Contains(logs.String(), want) {
		t.Errorf("the lock wait's log does not name the open transaction (%s); logs:\n%s", want, logs.String())
	}

	// A writer waits at most one attempt's lock timeout behind the migration.
	wctx, cancel := context.WithTimeout(ctx, 3*schema.MigrationLockTimeout)
	defer cancel()
	if _, err := db.Pool.Exec(wctx, `INSERT INTO deliveries (notification_id, token, outcome)
		VALUES (gen_random_uuid(), 'written-during-the-migration', 'pending')`); err != nil {
		t.Fatalf("a writer of deliveries was held behind the pending migration: %v", err)
	}
	select {
	case r := <-done:
		t.Fatalf("Migrate returned (%d, %v) while the transaction still held deliveries", r.n, r.err)
	default:
	}

	if err := blocker.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-done:
		if r.n != 1 || r.err != nil {
			t.Fatalf("Migrate = %d, %v; want 1, nil", r.n, r.err)
		}
	case <-time.After(time.Minute):
		t.Fatalf("Migrate did not apply the migration within a minute of the transaction's end; logs:\n%s", logs.String())
	}
	var column bool
	if err := db.Pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM information_schema.columns
		WHERE table_name = 'deliveries' AND column_name = 'dead_letter_generation')`).Scan(&column); err != nil || !column {
		t.Errorf("deliveries.dead_letter_generation exists = %v (%v) after Migrate, want true", column, err)
	}
	if diff := cmp.Diff(knownVersions(t), versions(t, db)); diff != "" {
		t.Errorf("schema_migrations (-want +got):\n%s", diff)
	}
}
