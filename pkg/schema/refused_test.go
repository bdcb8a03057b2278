package schema_test

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"notify/pkg/pgtest"
	"notify/pkg/schema"
	"notify/pkg/testenv"
)

// withURL returns the test server's DATABASE_URL changed by edit.
func withURL(t *testing.T, edit func(*url.URL)) string {
	t.Helper()
	u, err := url.Parse(testenv.DatabaseURL(t))
	if err != nil {
		t.Fatal(err)
	}
	edit(u)
	return u.String()
}

// closedPort is an address nothing listens on: connecting is refused.
func closedPort(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	_ = lis.Close()
	return addr
}

func newPool(t *testing.T, dbURL string, log *slog.Logger) *pgxpool.Pool {
	t.Helper()
	pool, err := schema.NewPool(context.Background(), dbURL, 0, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// TestStartStopsWhenPostgreSQLRefusesDatabaseURL: a wrong password or database is a setting
// to fix, so a starting service stops on it with an error naming DATABASE_URL instead of
// waiting for ever (it logged "waiting for the database schema … 28P01" every 30 s as a
// warning). The role notify exists; its password is never changed, only the URL's.
func TestStartStopsWhenPostgreSQLRefusesDatabaseURL(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, url, sqlstate string
	}{
		{"wrong password", withURL(t, func(u *url.URL) { u.User = url.UserPassword(u.User.Username(), "wrongpw") }), "28P01"},
		// Under password authentication PostgreSQL answers a role that does not exist as it
		// answers a wrong password, so that the answer does not tell which roles exist.
		{"no such role", withURL(t, func(u *url.URL) { u.User = url.UserPassword("notify_no_such_role", "x") }), "28P01"},
		{"no such database", withURL(t, func(u *url.URL) { u.Path = "/notify_no_such_database" }), "3D000"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var logs logBuffer
			log := slog.New(slog.NewTextHandler(&logs, nil))
			// Far longer than a refused connection takes: had Wait waited, it would return
			// ctx's error.
			ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
			defer cancel()

			err := schema.Wait(ctx, newPool(t, tc.url, log), log, 10*time.Millisecond)
			if _, ok := errors.AsType[*schema.RefusedError](err); !ok {
				t.Fatalf("Wait = %v, want a *schema.RefusedError", err)
			}
			if !strings.HasPrefix(err.Error(), "DATABASE_URL: ") || !strings.Contains(err.Error(), tc.sqlstate) {
				t.Errorf("Wait = %q, want an error starting DATABASE_URL: with PostgreSQL's reason (%s)", err, tc.sqlstate)
			}
			if strings.Contains(err.Error(), "wrongpw") {
				t.Errorf("Wait = %q quotes the password", err)
			}
			// It did not try again: the first failed check logs that it waits.
			if strings.Contains(logs.String(), "waiting") {
				t.Errorf("Wait waited:\n%s", logs.String())
			}

			// The services' path (sender, retrier, deadletter): the error is DATABASE_URL's,
			// not the schema's, and nothing runs.
			ran := false
			err = schema.WaitThen(ctx, newPool(t, tc.url, log), log, func(context.Context) error { ran = true; return nil })
			if ran || err == nil || !strings.HasPrefix(err.Error(), "DATABASE_URL: ") {
				t.Errorf("WaitThen: ran %v, err %v; want not run, an error starting DATABASE_URL:", ran, err)
			}
			if strings.Contains(logs.String(), "level=ERROR") {
				t.Errorf("the pool logged a refusal at start, which the error reports:\n%s", logs.String())
			}
		})
	}
}

// TestStartWaitsForWhatWaitingFixes: no server listening yet, or one that does not take
// connections to the database for now (55000), is waited for until ctx ends.
func TestStartWaitsForWhatWaitingFixes(t *testing.T) {
	t.Parallel()
	closedDB := pgtest.NewEmpty(t)
	admin, err := pgx.Connect(t.Context(), testenv.DatabaseURL(t))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	var name string
	if err := closedDB.Pool.QueryRow(t.Context(), "SELECT current_database()").Scan(&name); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Exec(t.Context(), "ALTER DATABASE "+pgx.Identifier{name}.Sanitize()+" ALLOW_CONNECTIONS false"); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name, url, inErr string
	}{
		{"connection refused", withURL(t, func(u *url.URL) { u.Host = closedPort(t) }), "connection refused"},
		{"database not accepting connections", closedDB.URL, "55000"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var logs logBuffer
			log := slog.New(slog.NewTextHandler(&logs, nil))
			ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
			defer cancel()
			err := schema.Wait(ctx, newPool(t, tc.url, log), log, 10*time.Millisecond)
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("Wait = %v, want it to wait until ctx ends", err)
			}
			if !strings.Contains(logs.String(), "waiting for the database schema") || !strings.Contains(logs.String(), tc.inErr) {
				t.Errorf("log:\n%s\nwant it waiting, with the error (%s)", logs.String(), tc.inErr)
			}

			ctx, cancel = context.WithTimeout(t.Context(), 500*time.Millisecond)
			defer cancel()
			if err := schema.WaitThen(ctx, newPool(t, tc.url, log), log, func(context.Context) error { return errors.New("ran") }); err != nil {
				t.Errorf("WaitThen = %v, want nil: ctx ending while it waits is a normal stop", err)
			}
		})
	}
}

// TestRefusedOnlyWhenConnecting: the same SQLSTATEs from a query (a "permission denied for
// table", 42501) are not DATABASE_URL's fault.
func TestRefusedOnlyWhenConnecting(t *testing.T) {
	t.Parallel()
	for _, err := range []error{
		nil,
		context.Canceled,
		&pgconn.PgError{Severity: "ERROR", Code: "42501", Message: "permission denied for table devices"},
		&pgconn.PgError{Severity: "FATAL", Code: "28P01"},
	} {
		if got := schema.Refused(err); got != nil {
			t.Errorf("Refused(%v) = %v, want nil", err, got)
		}
	}
	refused := &schema.RefusedError{Err: errors.New("x")}
	if got := schema.Refused(refused); got != refused {
		t.Errorf("Refused(a *RefusedError) = %v, want it unchanged", got)
	}
}

// TestPoolLogsARefusalAfterStart: PostgreSQL refusing a running service's new connections
// (a password rotated, here the database dropped) does not stop it: the pool keeps trying
// and says so as an error naming DATABASE_URL, once until it changes, and again when
// connections are accepted.
func TestPoolLogsARefusalAfterStart(t *testing.T) {
	t.Parallel()
	db := pgtest.NewEmpty(t)
	var name string
	if err := db.Pool.QueryRow(t.Context(), "SELECT current_database()").Scan(&name); err != nil {
		t.Fatal(err)
	}
	admin, err := pgx.Connect(t.Context(), testenv.DatabaseURL(t))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())

	var logs logBuffer
	pool := newPool(t, db.URL, slog.New(slog.NewTextHandler(&logs, nil)))
	if err := pool.Ping(t.Context()); err != nil {
		t.Fatal(err)
	}
	pool.Reset() // the next Ping connects anew
	if _, err := admin.Exec(t.Context(), "DROP DATABASE "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		err := pool.Ping(t.Context())
		if _, ok := errors.AsType[*schema.RefusedError](schema.Refused(err)); !ok {
			t.Fatalf("Ping after the database was dropped = %v, want a refusal", err)
		}
	}
	if n := strings.Count(logs.String(), "level=ERROR"); n != 1 || !strings.Contains(logs.String(), "DATABASE_URL: PostgreSQL refuses new connections") ||
		!strings.Contains(logs.String(), "3D000") {
		t.Errorf("log after 3 refused connections:\n%s\nwant one error naming DATABASE_URL, with PostgreSQL's reason", logs.String())
	}

	if _, err := admin.Exec(t.Context(), "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	if err := pool.Ping(t.Context()); err != nil {
		t.Fatalf("Ping once the database is back: %v", err)
	}
	if !strings.Contains(logs.String(), "PostgreSQL accepts new connections again") {
		t.Errorf("log once the database is back:\n%s\nwant it saying so", logs.String())
	}
}
