// Package pgtest gives each integration test its own freshly migrated PostgreSQL database.
//
// The first call in a process migrates a template database named after the schema's
// fingerprint (so a changed migration gets a new template and old ones are never reused);
// every test then gets a cheap copy of it (CREATE DATABASE … TEMPLATE) that is dropped when
// the test ends. Test binaries of several packages run at once; an advisory lock keeps
// them from building the same template twice.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"notify/pkg/schema"
	"notify/pkg/testenv"
)

// templateLockKey serialises template creation across test processes.
const templateLockKey int64 = 0x6e6f74696674

var (
	templateOnce sync.Once
	templateName string
	templateErr  error
)

// DB is one test's database.
type DB struct {
	URL  string        // connection string for the services under test (DATABASE_URL)
	Pool *pgxpool.Pool // a pool for the test itself, closed at cleanup
}

// New creates a migrated database for this test and drops it when the test ends. It skips
// (or fails in CI) when PostgreSQL is not reachable.
func New(t testing.TB) *DB {
	t.Helper()
	baseURL := testenv.DatabaseURL(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	templateOnce.Do(func() { templateName, templateErr = ensureTemplate(ctx, baseURL) })
	if templateErr != nil {
		t.Fatalf("pgtest: template database: %v", templateErr)
	}
	return newDatabase(t, baseURL, templateName)
}

// NewEmpty creates a database with no schema at all for this test (for tests of the
// migrations themselves) and drops it when the test ends.
func NewEmpty(t testing.TB) *DB {
	t.Helper()
	return newDatabase(t, testenv.DatabaseURL(t), "template0")
}

// SetDefault sets a setting of the test's database (ALTER DATABASE … SET), which sessions
// take when they connect: the pool's open connections keep what they had.
func (db *DB) SetDefault(t testing.TB, setting, value string) {
	t.Helper()
	ctx := context.Background()
	var name string
	if err := db.Pool.QueryRow(ctx, "SELECT current_database()").Scan(&name); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	if _, err := db.Pool.Exec(ctx, "ALTER DATABASE "+pgx.Identifier{name}.Sanitize()+" SET "+
		pgx.Identifier{setting}.Sanitize()+" = "+quoteLiteral(value)); err != nil {
		t.Fatalf("pgtest: set %s of the test database: %v", setting, err)
	}
}

// quoteLiteral is s as an SQL string literal.
func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

func newDatabase(t testing.TB, baseURL, template string) *DB {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	name := "notify_test_" + randomSuffix()
	admin, err := pgx.Connect(ctx, baseURL)
	if err != nil {
		t.Fatalf("pgtest: connect %s: %v", redact(baseURL), err)
	}
	defer admin.Close(ctx)
	if err := createFromTemplate(ctx, admin, name, template); err != nil {
		t.Fatalf("pgtest: %v", err)
	}

	dbURL, err := withDatabase(baseURL, name)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		t.Fatalf("pgtest: open pool: %v", err)
	}
	t.Cleanup(func() {
		pool.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, baseURL)
		if err != nil {
			t.Errorf("pgtest: connect to drop %s: %v", name, err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
			t.Errorf("pgtest: drop %s: %v", name, err)
		}
	})
	return &DB{URL: dbURL, Pool: pool}
}

func ensureTemplate(ctx context.Context, baseURL string) (string, error) {
	fp, err := schema.Fingerprint()
	if err != nil {
		return "", err
	}
	name := "notify_template_" + fp
	admin, err := pgx.Connect(ctx, baseURL)
	if err != nil {
		return "", fmt.Errorf("connect %s: %w", redact(baseURL), err)
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "SELECT pg_advisory_lock($1)", templateLockKey); err != nil {
		return "", fmt.Errorf("take template lock: %w", err)
	}
	defer admin.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", templateLockKey) //nolint:errcheck // the connection closes next

	var exists bool
	if err := admin.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		return "", fmt.Errorf("look for %s: %w", name, err)
	}
	if exists {
		return name, nil
	}
	// Build under a temporary name and rename when complete, so a crash half-way never
	// leaves a template that looks finished.
	building := name + "_building"
	if _, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{building}.Sanitize()+" WITH (FORCE)"); err != nil {
		return "", fmt.Errorf("drop leftover %s: %w", building, err)
	}
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{building}.Sanitize()); err != nil {
		return "", fmt.Errorf("create %s: %w", building, err)
	}
	buildURL, err := withDatabase(baseURL, building)
	if err != nil {
		return "", err
	}
	pool, err := pgxpool.New(ctx, buildURL)
	if err != nil {
		return "", fmt.Errorf("open %s: %w", building, err)
	}
	_, err = schema.Migrate(ctx, pool, slog.New(slog.NewTextHandler(io.Discard, nil)))
	pool.Close()
	if err != nil {
		return "", fmt.Errorf("migrate %s: %w", building, err)
	}
	if _, err := admin.Exec(ctx, "ALTER DATABASE "+pgx.Identifier{building}.Sanitize()+" RENAME TO "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", fmt.Errorf("rename %s: %w", building, err)
	}
	return name, nil
}

// createFromTemplate copies the template. PostgreSQL refuses while another session is
// connected to the template (another process may be between its rename and disconnect),
// so that one error is retried briefly.
func createFromTemplate(ctx context.Context, admin *pgx.Conn, name, template string) error {
	sql := "CREATE DATABASE " + pgx.Identifier{name}.Sanitize() + " TEMPLATE " + pgx.Identifier{template}.Sanitize()
	for attempt := 0; ; attempt++ {
		_, err := admin.Exec(ctx, sql)
		var pgErr *pgconn.PgError
		if err == nil || !errors.As(err, &pgErr) || pgErr.Code != "55006" || attempt == 50 {
			if err != nil {
				return fmt.Errorf("create %s from %s: %w", name, template, err)
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("create %s from %s: %w", name, template, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func withDatabase(rawURL, database string) (string, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "", fmt.Errorf("parse DATABASE_URL: %w", err)
	}
	u.Path = "/" + database
	return u.String(), nil
}

// redact hides the password of a connection URL in messages.
func redact(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "(unparseable URL)"
	}
	return u.Redacted()
}

func randomSuffix() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return strings.ToLower(hex.EncodeToString(b[:]))
}
