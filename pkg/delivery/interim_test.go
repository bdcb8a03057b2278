package delivery

import (
	"context"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"notify/pkg/pgtest"
	"notify/pkg/schema"
)

// TestInterimLockCommitsAsynchronouslyOnlyWithoutStatusChange: the lock of a transaction
// of interim records turns synchronous_commit off for that transaction only when every
// notification it locks is pending, scheduled or cancelled (the record then changes no
// status and writes no status event); with any other status among them, or no row at all,
// the setting stays what it was.
func TestInterimLockCommitsAsynchronouslyOnlyWithoutStatusChange(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	ids := map[string]uuid.UUID{}
	for _, st := range schema.Statuses {
		ids[st] = uuid.New()
		if _, err := db.Pool.Exec(ctx, `INSERT INTO notifications (id, caller, type, request, expires_at, status)
			VALUES ($1, 'test', 'promo', '{}', now() + interval '1 hour', $2)`, ids[st], st); err != nil {
			t.Fatal(err)
		}
	}
	setting := func(locked ...uuid.UUID) string {
		t.Helper()
		var got string
		err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, "SET LOCAL synchronous_commit = 'remote_write'"); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, interimLockSQL, schema.UUIDs(locked)); err != nil {
				return err
			}
			if err := tx.QueryRow(ctx, "SELECT current_setting('synchronous_commit')").Scan(&got); err != nil {
				return err
			}
			return errRollback
		})
		if err != errRollback {
			t.Fatal(err)
		}
		return got
	}
	for _, st := range schema.Statuses {
		want := "remote_write" // unchanged
		if st == schema.StatusPending || st == schema.StatusScheduled || st == schema.StatusCancelled {
			want = "off"
		}
		if got := setting(ids[st]); got != want {
			t.Errorf("interim lock of a %s notification: synchronous_commit %q, want %q", st, got, want)
		}
	}
	if got := setting(ids[schema.StatusPending], ids[schema.StatusCancelled]); got != "off" {
		t.Errorf("pending and cancelled: synchronous_commit %q, want off", got)
	}
	if got := setting(ids[schema.StatusPending], ids[schema.StatusRetrying]); got != "remote_write" {
		t.Errorf("pending and retrying: synchronous_commit %q, want it unchanged", got)
	}
	if got := setting(uuid.New()); got != "remote_write" {
		t.Errorf("a notification that does not exist: synchronous_commit %q, want it unchanged", got)
	}
}

// TestRecordArgsInterimOnlyWhenEveryRecordIs: a transaction commits asynchronously only
// when every record in it is interim and none is final.
func TestRecordArgsInterimOnlyWhenEveryRecordIs(t *testing.T) {
	a, b := uuid.New(), uuid.New()
	for _, c := range []struct {
		name string
		recs []Record
		want bool
	}{
		{"none", nil, false},
		{"one interim", []Record{{ID: a, Interim: true}}, true},
		{"two interim", []Record{{ID: a, Interim: true}, {ID: b, Interim: true}}, true},
		{"interim and not", []Record{{ID: a, Interim: true}, {ID: b}}, false},
		{"interim but final", []Record{{ID: a, Interim: true, Final: true}}, false},
		{"plain", []Record{{ID: a}}, false},
	} {
		if got := newRecordArgs(c.recs).interim; got != c.want {
			t.Errorf("%s: interim %v, want %v", c.name, got, c.want)
		}
	}
}
