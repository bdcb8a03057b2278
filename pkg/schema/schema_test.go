package schema_test

import (
	"context"
	"io"
	"log/slog"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5"

	"notify/pkg/pgtest"
	"notify/pkg/schema"
)

func TestMigrateIsIdempotentAndConcurrent(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t) // already migrated through the template
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))

	// Replicas starting together: every one succeeds and none applies anything twice.
	errs := make(chan error, 4)
	applied := make(chan int, 4)
	for range 4 {
		go func() {
			n, err := schema.Migrate(ctx, db.Pool, log)
			applied <- n
			errs <- err
		}()
	}
	for range 4 {
		if err := <-errs; err != nil {
			t.Fatalf("Migrate: %v", err)
		}
		if n := <-applied; n != 0 {
			t.Errorf("Migrate on a migrated database applied %d migrations, want 0", n)
		}
	}

	ms, err := schema.Migrations()
	if err != nil {
		t.Fatal(err)
	}
	rows, _ := db.Pool.Query(ctx, "SELECT version FROM schema_migrations ORDER BY version")
	got, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(ms) {
		t.Fatalf("schema_migrations has %v, want the %d embedded migrations", got, len(ms))
	}
	for i, m := range ms {
		if got[i] != m.Version {
			t.Errorf("schema_migrations[%d] = %q, want %q", i, got[i], m.Version)
		}
	}
}

func TestSchemaConstraints(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()

	exec := func(sql string, args ...any) error {
		_, err := db.Pool.Exec(ctx, sql, args...)
		return err
	}
	if err := exec(`INSERT INTO notifications (id, caller, idempotency_key, type, request, expires_at)
		VALUES (gen_random_uuid(), 'orders', 'k1', 't', '{}', now())`); err != nil {
		t.Fatalf("first notification: %v", err)
	}
	if err := exec(`INSERT INTO notifications (id, caller, idempotency_key, type, request, expires_at)
		VALUES (gen_random_uuid(), 'orders', 'k1', 't', '{}', now())`); err == nil {
		t.Error("same caller and idempotency key accepted twice, want a unique violation")
	}
	if err := exec(`INSERT INTO notifications (id, caller, idempotency_key, type, request, expires_at)
		VALUES (gen_random_uuid(), 'comments', 'k1', 't', '{}', now())`); err != nil {
		t.Errorf("same idempotency key from another caller: %v, want accepted", err)
	}

	if err := exec(`INSERT INTO devices (device_id, user_id, token, platform) VALUES ('d1', 'u1', 'tok', 'android')`); err != nil {
		t.Fatalf("device: %v", err)
	}
	if err := exec(`INSERT INTO devices (device_id, user_id, token, platform) VALUES ('d2', 'u2', 'tok', 'ios')`); err == nil {
		t.Error("an active token on two devices was accepted, want a unique violation")
	}
	if err := exec(`UPDATE devices SET active = false, deactivated_at = now(), deactivation_reason = 'test' WHERE device_id = 'd1'`); err != nil {
		t.Fatalf("deactivate: %v", err)
	}
	if err := exec(`INSERT INTO devices (device_id, user_id, token, platform) VALUES ('d2', 'u2', 'tok', 'ios')`); err != nil {
		t.Errorf("token of an inactive device registered elsewhere: %v, want accepted", err)
	}
	if err := exec(`UPDATE devices SET active = false WHERE device_id = 'd2'`); err == nil {
		t.Error("inactive device without deactivated_at accepted, want a check violation")
	}

	// A device is an installation of one app (0015): the same device id and the same active
	// token in another app is another device; twice in one app is refused.
	if err := exec(`INSERT INTO devices (device_id, user_id, token, platform, app) VALUES ('d2', 'u2', 'tok', 'ios', 'staff')`); err != nil {
		t.Errorf("device id and token of the default app registered for staff: %v, want accepted", err)
	}
	if err := exec(`INSERT INTO devices (device_id, user_id, token, platform, app) VALUES ('d2', 'u3', 'tok-3', 'ios', 'staff')`); err == nil {
		t.Error("a device id twice in one app was accepted, want a unique violation")
	}
}

// TestDevicesPerAppMigrationRunsAgain: a no-transaction migration interrupted after its last
// statement is run again from the top; 0015 must then leave the same schema (one primary key
// on (app, device_id), no stray index) and keep the rows.
func TestDevicesPerAppMigrationRunsAgain(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	if _, err := db.Pool.Exec(ctx, `INSERT INTO devices (device_id, user_id, token, platform) VALUES ('d1', 'u1', 'tok', 'android')`); err != nil {
		t.Fatal(err)
	}
	ms, err := schema.Migrations()
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(ms, func(m schema.Migration) bool { return m.Version == "0015_devices_per_app" })
	if i < 0 {
		t.Fatal("no migration 0015_devices_per_app")
	}
	for _, stmt := range ms[i].Statements() {
		if _, err := db.Pool.Exec(ctx, stmt); err != nil {
			t.Fatalf("run again %q: %v", stmt, err)
		}
	}
	rows, err := db.Pool.Query(ctx, `SELECT indexname || ' ' || regexp_replace(indexdef, '.* USING ', '') FROM pg_indexes WHERE tablename = 'devices' ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	indexes, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"devices_active_device_id btree (app, device_id) WHERE active",
		"devices_active_last_seen btree (GREATEST(registered_at, last_seen_at)) WHERE active",
		"devices_active_token btree (app, token) WHERE active",
		"devices_pkey btree (app, device_id)",
		"devices_user_active btree (app, user_id) WHERE active",
		"devices_user_created_app btree (user_id, created_at DESC, app DESC, device_id DESC)",
	}
	if diff := cmp.Diff(want, indexes); diff != "" {
		t.Errorf("indexes of devices (-want +got):\n%s", diff)
	}
	var n int
	if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM devices WHERE app = 'default' AND device_id = 'd1'`).Scan(&n); err != nil || n != 1 {
		t.Errorf("device d1 of default after the rerun: %d rows (%v), want 1", n, err)
	}
}
