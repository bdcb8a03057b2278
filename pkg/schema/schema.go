// Package schema holds notify's PostgreSQL schema as embedded SQL migrations, applies them,
// and tells a service whether the database is at the version it was built for.
//
// Migrations are plain SQL files named NNNN_description.sql, applied in name order and
// recorded in schema_migrations (version = file name without .sql). Each runs in its own
// transaction, unless its first line is "-- notify:no-transaction" (see Migration). A
// session-level advisory lock serialises replicas (and a migration Job) that migrate at
// once, so exactly one of them applies a migration and the others find it done.
//
// A binary knows the migrations embedded in it. Migrate and Check refuse a database that
// has a migration newer than the newest one the binary knows: an older release must not
// write to a schema it was not built for. Services that do not migrate (sender, retrier,
// deadletter, a producer with MIGRATE_ON_START=false) Wait until every migration they know
// is applied.
//
// Why our own runner and not pressly/goose or jackc/tern: both were weighed (goose v3.30's
// Provider with an embed.FS and its "NO TRANSACTION" annotation; tern v2's disable-tx).
// Neither keeps our bookkeeping: goose records int64 versions in goose_db_version, tern one
// integer in its own table, so every existing database would need a bridge from
// schema_migrations (a custom goose database.Store, or seeding their table) that is itself
// more code than what they would replace; goose also needs database/sql beside our pgx pool.
// Neither waits for a schema, nor drops the INVALID index an interrupted CREATE INDEX
// CONCURRENTLY leaves behind, so those would be ours anyway. What they would have given us —
// a non-transactional mode and a status listing — is a few dozen lines here.
package schema

import (
	"cmp"
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// migrateLockKey is the advisory lock taken while migrating ("notify" in ASCII).
const migrateLockKey int64 = 0x6e6f74696679

// noTransactionMarker, as a migration's first line, makes it a no-transaction migration.
const noTransactionMarker = "-- notify:no-transaction"

// Migration is one embedded SQL file.
type Migration struct {
	Version string // file name without .sql, e.g. "0001_init"
	SQL     string

	// NoTransaction migrations (first line "-- notify:no-transaction") are for statements
	// PostgreSQL refuses in a transaction, such as CREATE INDEX CONCURRENTLY, which builds
	// an index on a large table without blocking its writers. Their statements run one by
	// one, each ending with a line that ends in ";" (no dollar-quoted bodies), and the
	// migration is recorded only after the last one: an interrupted run is run again from
	// the top, so every statement must be idempotent (IF NOT EXISTS, which Migrations
	// requires of CREATE INDEX CONCURRENTLY). An interrupted CREATE INDEX CONCURRENTLY
	// leaves an INVALID index that IF NOT EXISTS would keep for ever (never used by
	// queries, yet maintained on every write), so before each such statement an INVALID
	// index of that name is dropped, concurrently.
	NoTransaction bool
}

// Statements returns the statements of a no-transaction migration, comments left out.
func (m Migration) Statements() []string {
	var out []string
	var cur strings.Builder
	for line := range strings.SplitSeq(m.SQL, "\n") {
		trimmed := strings.TrimSpace(line)
		if trimmed == "" || strings.HasPrefix(trimmed, "--") {
			continue
		}
		cur.WriteString(line)
		cur.WriteString("\n")
		if strings.HasSuffix(trimmed, ";") {
			out = append(out, strings.TrimSpace(cur.String()))
			cur.Reset()
		}
	}
	if s := strings.TrimSpace(cur.String()); s != "" {
		out = append(out, s)
	}
	return out
}

var (
	concurrentIndex   = regexp.MustCompile(`(?i)^CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s`)
	concurrentIndexIf = regexp.MustCompile(`(?i)^CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+IF\s+NOT\s+EXISTS\s+("?)(\w+)("?)\s`)
)

// Migrations returns the embedded migrations in the order they are applied.
func Migrations() ([]Migration, error) { return loadMigrations() }

var loadMigrations = sync.OnceValues(func() ([]Migration, error) {
	names, err := fs.Glob(migrationFiles, "migrations/*.sql")
	if err != nil {
		return nil, fmt.Errorf("list migrations: %w", err)
	}
	slices.Sort(names)
	out := make([]Migration, 0, len(names))
	for _, name := range names {
		b, err := migrationFiles.ReadFile(name)
		if err != nil {
			return nil, fmt.Errorf("read migration %s: %w", name, err)
		}
		m := Migration{Version: strings.TrimSuffix(strings.TrimPrefix(name, "migrations/"), ".sql"), SQL: string(b)}
		m.NoTransaction = strings.HasPrefix(m.SQL, noTransactionMarker+"\n")
		if m.NoTransaction {
			for _, s := range m.Statements() {
				if concurrentIndex.MatchString(s) && !concurrentIndexIf.MatchString(s) {
					return nil, fmt.Errorf("migration %s: CREATE INDEX CONCURRENTLY without IF NOT EXISTS cannot be run again after an interruption", m.Version)
				}
			}
		}
		out = append(out, m)
	}
	if len(out) == 0 {
		return nil, errors.New("no migrations embedded")
	}
	return out, nil
})

// Latest is the version of the newest migration this binary knows.
func Latest() string {
	ms, err := Migrations()
	if err != nil {
		return ""
	}
	return ms[len(ms)-1].Version
}

// Fingerprint is a short hash of every migration's name and content: two databases
// migrated with the same fingerprint have the same schema. Tests name template databases
// by it.
func Fingerprint() (string, error) {
	ms, err := Migrations()
	if err != nil {
		return "", err
	}
	h := sha256.New()
	for _, m := range ms {
		fmt.Fprintf(h, "%s\x00%s\x00", m.Version, m.SQL)
	}
	return hex.EncodeToString(h.Sum(nil))[:12], nil
}

// NewerError means the database has a migration newer than the newest this binary knows.
type NewerError struct {
	Database string // the newest version applied to the database
	Binary   string // the newest version this binary knows
}

func (e *NewerError) Error() string {
	return fmt.Sprintf("database schema is at version %s, newer than %s, the newest this binary knows: "+
		"run a release that knows %s (this one must not write to a schema it was not built for)",
		e.Database, e.Binary, e.Database)
}

// ErrPending means migrations this binary knows are not applied yet.
var ErrPending = errors.New("database schema is not migrated yet")

// Applied is one row of schema_migrations.
type Applied struct {
	Version   string
	AppliedAt time.Time
}

// Status compares a database's migrations with this binary's.
type Status struct {
	Applied []Applied   // every applied migration, in version order (some may be unknown to this binary)
	Pending []Migration // migrations this binary knows and the database does not have
	Latest  string      // the newest migration this binary knows
}

// Current is the newest applied version, or "" for a database never migrated.
func (s Status) Current() string {
	if len(s.Applied) == 0 {
		return ""
	}
	return s.Applied[len(s.Applied)-1].Version
}

// Err is nil when the database has exactly the migrations this binary knows, a
// *NewerError when it has a newer one, and an error wrapping ErrPending when some are
// missing.
func (s Status) Err() error {
	if cur := s.Current(); cur > s.Latest {
		return &NewerError{Database: cur, Binary: s.Latest}
	}
	if len(s.Pending) > 0 {
		return fmt.Errorf("%w: at version %s, this binary needs %s (%d pending; run `producer migrate up`, or a producer with MIGRATE_ON_START=true)",
			ErrPending, cmp.Or(s.Current(), "(none)"), s.Latest, len(s.Pending))
	}
	return nil
}

// querier is what reading the status needs: a pool or the connection holding the lock.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// ReadStatus reads which migrations the database has.
func ReadStatus(ctx context.Context, q querier) (Status, error) {
	ms, err := Migrations()
	if err != nil {
		return Status{}, err
	}
	st := Status{Latest: ms[len(ms)-1].Version}
	var exists bool
	if err := q.QueryRow(ctx, "SELECT to_regclass('schema_migrations') IS NOT NULL").Scan(&exists); err != nil {
		return Status{}, fmt.Errorf("read schema_migrations: %w", err)
	}
	if exists {
		rows, err := q.Query(ctx, "SELECT version, applied_at FROM schema_migrations ORDER BY version")
		if err != nil {
			return Status{}, fmt.Errorf("read schema_migrations: %w", err)
		}
		if st.Applied, err = pgx.CollectRows(rows, pgx.RowToStructByPos[Applied]); err != nil {
			return Status{}, fmt.Errorf("read schema_migrations: %w", err)
		}
	}
	for _, m := range ms {
		if !slices.ContainsFunc(st.Applied, func(a Applied) bool { return a.Version == m.Version }) {
			st.Pending = append(st.Pending, m)
		}
	}
	return st, nil
}

// Check returns nil when the database is at exactly the version this binary knows, and
// otherwise the error Status.Err describes (or why the status could not be read).
func Check(ctx context.Context, pool *pgxpool.Pool) error {
	st, err := ReadStatus(ctx, pool)
	if err != nil {
		return err
	}
	return st.Err()
}

// Wait returns nil once every migration this binary knows is applied, polling every
// interval and logging now and then while it waits (for the database to answer, or for a
// producer or `producer migrate up` to migrate it). It returns a *NewerError at once if
// the database is newer than this binary, a *RefusedError at once if PostgreSQL refuses
// DATABASE_URL for good (a wrong password, no such role or database: see Refused), and
// ctx's error if ctx ends first. Waiting, rather than failing, lets every service start at
// once, in any order; a refusal is a setting to fix, which no wait would.
func Wait(ctx context.Context, pool *pgxpool.Pool, log *slog.Logger, interval time.Duration) error {
	return wait(ctx, pool, log, interval, func(error) {})
}

// wait is Wait, telling report the outcome of every check.
func wait(ctx context.Context, pool *pgxpool.Pool, log *slog.Logger, interval time.Duration, report func(error)) error {
	var lastLog time.Time
	waited := false
	for {
		err := Check(ctx, pool)
		report(err)
		var newer *NewerError
		switch refused := Refused(err); {
		case err == nil:
			if waited {
				log.Info("database schema is ready", "version", Latest())
			}
			return nil
		case errors.As(err, &newer):
			return err
		case refused != nil:
			return refused
		case ctx.Err() != nil:
			return ctx.Err()
		}
		waited = true
		if time.Since(lastLog) >= 30*time.Second {
			log.Warn("waiting for the database schema", "want", Latest(), "err", err)
			lastLog = time.Now()
		}
		t := time.NewTimer(interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// WaitThen runs run once the schema is ready (Wait), and returns what it returns. A ctx that
// ends while waiting is a normal stop (nil); a schema newer than this binary, or PostgreSQL
// refusing DATABASE_URL, is an error. It is how the services that do not migrate start their
// consumers: after the schema, never before.
func WaitThen(ctx context.Context, pool *pgxpool.Pool, log *slog.Logger, run func(context.Context) error) error {
	return (&Gate{}).WaitThen(ctx, pool, log, run)
}

// Gate is WaitThen with a readiness check that says what it waits for: a service's /readyz
// then reads "schema: waiting for the database schema: … this binary needs 0019_…" during an
// upgrade, not only that its consumer is not consuming.
type Gate struct {
	mu      sync.Mutex
	err     error
	checked bool
}

// Check is nil once the schema was found ready, and otherwise says why not.
func (g *Gate) Check(context.Context) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	switch {
	case !g.checked:
		return errors.New("not checked yet")
	case g.err != nil:
		return fmt.Errorf("waiting for the database schema: %w", g.err)
	}
	return nil
}

func (g *Gate) report(err error) {
	g.mu.Lock()
	g.err, g.checked = err, true
	g.mu.Unlock()
}

// WaitThen is the package's WaitThen, keeping Check up to date meanwhile.
func (g *Gate) WaitThen(ctx context.Context, pool *pgxpool.Pool, log *slog.Logger, run func(context.Context) error) error {
	if err := wait(ctx, pool, log, 2*time.Second, g.report); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		if refused := Refused(err); refused != nil {
			return refused // names DATABASE_URL; not a problem of the schema
		}
		return fmt.Errorf("database schema: %w", err)
	}
	return run(ctx)
}

// Migrate applies every migration the database does not have yet and returns how many it
// applied. It applies nothing to a database newer than this binary (a *NewerError).
func Migrate(ctx context.Context, pool *pgxpool.Pool, log *slog.Logger) (int, error) {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return 0, fmt.Errorf("acquire connection for migrations: %w", err)
	}
	defer conn.Release()

	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", migrateLockKey); err != nil {
		return 0, fmt.Errorf("take migration lock: %w", err)
	}
	defer func() {
		// Unlock on a fresh context: ctx may be done, and a lock left held would block the
		// next replica until this connection closes.
		_, _ = conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", migrateLockKey)
	}()

	// The table as the first runner made it: databases it migrated carry on unchanged.
	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version    text PRIMARY KEY,
		applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return 0, fmt.Errorf("create schema_migrations: %w", err)
	}
	st, err := ReadStatus(ctx, conn)
	if err != nil {
		return 0, err
	}
	if err := st.Err(); !errors.Is(err, ErrPending) {
		return 0, err // nil (nothing to do) or newer
	}

	for i, m := range st.Pending {
		start := time.Now()
		if m.NoTransaction {
			err = applyWithoutTransaction(ctx, conn.Conn(), m, log)
		} else {
			err = applyInTransaction(ctx, conn.Conn(), m, log)
		}
		if err != nil {
			return i, fmt.Errorf("apply migration %s: %w", m.Version, err)
		}
		log.Info("applied migration", "version", m.Version, "duration", time.Since(start).Round(time.Millisecond))
	}
	return len(st.Pending), nil
}

// MigrationLockTimeout is how long one attempt of a migration that runs in a transaction
// waits for a table lock. A statement such as ALTER TABLE takes its table's exclusive lock,
// and while it waits for a transaction that holds the table (a long report, a backup's
// query, an idle transaction left open), every later reader and writer of the table queues
// behind it: without a bound, one forgotten transaction stops Publish or the senders for as
// long as it stays open. With it, writers wait at most this long per attempt; the migration
// is rolled back, logged with the oldest open transaction, and tried again after a pause
// (lockRetryPauses) until it gets its locks or ctx ends.
const MigrationLockTimeout = 3 * time.Second

// lockRetryPauses are the pauses between attempts of a migration that timed out waiting
// for a lock; the last one repeats. Writers run freely during each pause.
var lockRetryPauses = [...]time.Duration{time.Second, 2 * time.Second, 5 * time.Second, 10 * time.Second, 30 * time.Second}

// applyInTransaction applies a transactional migration and records it, in one transaction
// whose lock waits last at most MigrationLockTimeout, again and again while they time out.
func applyInTransaction(ctx context.Context, conn *pgx.Conn, m Migration, log *slog.Logger) error {
	setTimeout := fmt.Sprintf("SET LOCAL lock_timeout = %d", MigrationLockTimeout.Milliseconds())
	for attempt := 1; ; attempt++ {
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, setTimeout); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, m.SQL); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, "INSERT INTO schema_migrations (version) VALUES ($1)", m.Version)
			return err
		})
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "55P03" { // lock_not_available: lock_timeout passed
			return err
		}
		pause := lockRetryPauses[min(attempt, len(lockRetryPauses))-1]
		args := []any{"version", m.Version, "attempt", attempt, "lock_timeout", MigrationLockTimeout, "retry_in", pause}
		var pid int
		var age time.Duration
		var query string
		// Most likely the oldest open transaction holds the lock: name it for the operator.
		if conn.QueryRow(ctx, `SELECT pid, now() - xact_start, left(query, 200) FROM pg_stat_activity
			WHERE datname = current_database() AND xact_start IS NOT NULL AND pid <> pg_backend_pid()
			ORDER BY xact_start LIMIT 1`).Scan(&pid, &age, &query) == nil {
			args = append(args, "oldest_transaction_pid", pid, "oldest_transaction_age", age.Round(time.Second), "oldest_transaction_query", query)
		}
		log.Warn("migration waits for a table lock another transaction holds; rolled back to let writers on, trying again", args...)
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for a table lock: %w", context.Cause(ctx))
		case <-time.After(pause):
		}
	}
}

func applyWithoutTransaction(ctx context.Context, conn *pgx.Conn, m Migration, log *slog.Logger) error {
	for _, stmt := range m.Statements() {
		if sub := concurrentIndexIf.FindStringSubmatch(stmt); sub != nil {
			if err := dropInvalidIndex(ctx, conn, sub[2], log); err != nil {
				return err
			}
		}
		if _, err := conn.Exec(ctx, stmt); err != nil {
			return err
		}
	}
	_, err := conn.Exec(ctx, "INSERT INTO schema_migrations (version) VALUES ($1)", m.Version)
	return err
}

// dropInvalidIndex drops the index name if an interrupted CREATE INDEX CONCURRENTLY left it
// INVALID.
func dropInvalidIndex(ctx context.Context, conn *pgx.Conn, name string, log *slog.Logger) error {
	var invalid bool
	err := conn.QueryRow(ctx, `SELECT NOT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)`, name).Scan(&invalid)
	if errors.Is(err, pgx.ErrNoRows) || (err == nil && !invalid) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look for an invalid index %s: %w", name, err)
	}
	log.Warn("dropping the INVALID index an interrupted migration left, to build it again", "index", name)
	if _, err := conn.Exec(ctx, "DROP INDEX CONCURRENTLY IF EXISTS "+pgx.Identifier{name}.Sanitize()); err != nil {
		return fmt.Errorf("drop invalid index %s: %w", name, err)
	}
	return nil
}
