package schema_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"

	"notify/pkg/pgtest"
	"notify/pkg/schema"
)

// TestStatusEventsSetting: a status change writes its event unless the database's
// notify.status_events is off; a session takes the database's value when it connects.
func TestStatusEventsSetting(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	var id string
	if err := db.Pool.QueryRow(ctx, `INSERT INTO notifications (id, caller, type, request, expires_at)
		VALUES (gen_random_uuid(), 'orders', 'order.shipped', '{}', now() + interval '1 hour') RETURNING id`).Scan(&id); err != nil {
		t.Fatal(err)
	}
	change := schema.ChangeStatusSQL("$2", ", updated_at = now()", "n.id = $1")
	// changeOn sets the status on conn and returns how many status events the outbox holds
	// for the notification afterwards.
	changeOn := func(conn *pgx.Conn, status string) int {
		t.Helper()
		if _, err := conn.Exec(ctx, change, id, status); err != nil {
			t.Fatalf("change to %s: %v", status, err)
		}
		var n int
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM outbox WHERE notification_id = $1 AND message_type = $2`,
			id, schema.StatusEventType).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	connect := func() *pgx.Conn {
		t.Helper()
		conn, err := pgx.Connect(ctx, db.URL)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close(context.Background()) })
		return conn
	}
	eventsOn := func(conn *pgx.Conn) bool {
		t.Helper()
		var on bool
		if err := conn.QueryRow(ctx, schema.StatusEventsOnSQL).Scan(&on); err != nil {
			t.Fatal(err)
		}
		return on
	}

	before := connect()
	if !eventsOn(before) {
		t.Fatal("status events off in a database that never set notify.status_events")
	}
	if n := changeOn(before, schema.StatusRetrying); n != 1 {
		t.Fatalf("%d status events after a change, want 1", n)
	}

	db.SetDefault(t, schema.StatusEventsSetting, "off")
	after := connect()
	if eventsOn(after) {
		t.Error("status events on in a session that connected after ALTER DATABASE … SET notify.status_events = off")
	}
	if n := changeOn(after, schema.StatusFailed); n != 1 {
		t.Errorf("%d status events after a change with notify.status_events off, want still 1", n)
	}
	// A session keeps what it connected with.
	if n := changeOn(before, schema.StatusDelivered); n != 2 {
		t.Errorf("%d status events after a change in a session from before the switch, want 2", n)
	}
	// Anything but off writes them.
	if _, err := after.Exec(ctx, "SET "+schema.StatusEventsSetting+" = 'false'"); err != nil {
		t.Fatal(err)
	}
	if n := changeOn(after, schema.StatusExpired); n != 3 {
		t.Errorf("%d status events after a change with notify.status_events 'false', want 3 (only off turns them off)", n)
	}
}
