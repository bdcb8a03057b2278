package main

import (
	"context"
	"testing"
	"time"

	"notify/pkg/pgtest"
)

// The relay's drain counts the rows written to the outbox while the phase ran, not
// those written before it, however many each notification writes.
func TestBacklogsCountOutboxRows(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	insert := func(n int) {
		t.Helper()
		if _, err := db.Pool.Exec(ctx, `INSERT INTO outbox (routing_key, message_type, body)
			SELECT 'send', 'notify.bus.v1.SendTask', '\x00' FROM generate_series(1, $1)`, n); err != nil {
			t.Fatal(err)
		}
	}
	st := &stack{pool: db.Pool}
	fresh, err := watchBacklogs(ctx, st) // an outbox that never had a row
	if err != nil {
		t.Fatal(err)
	}
	fresh.stop()
	if fresh.firstID != 0 {
		t.Errorf("a new outbox's last id: %d, want 0", fresh.firstID)
	}

	insert(2) // an earlier phase's rows
	if _, err := db.Pool.Exec(ctx, "DELETE FROM outbox"); err != nil {
		t.Fatal(err)
	}

	b, err := watchBacklogs(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	defer b.stop()
	insert(3) // a notification: its task and two events
	insert(3)
	if _, err := db.Pool.Exec(ctx, "DELETE FROM outbox"); err != nil { // relayed
		t.Fatal(err)
	}
	if err := b.waitDrained(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	rows, err := b.rowsWritten(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rows != 6 {
		t.Errorf("rows written during the watch: %d, want 6", rows)
	}
}
