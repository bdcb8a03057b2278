package outbox

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"notify/pkg/pgtest"
	"notify/pkg/rabbit"
	"notify/pkg/sendpack"
)

// outboxIDs returns the ids of the outbox rows, in order.
func outboxIDs(t *testing.T, db *pgtest.DB) []int64 {
	t.Helper()
	rows, err := db.Pool.Query(context.Background(), "SELECT id FROM outbox ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	var ids []int64
	var id int64
	for rows.Next() {
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return ids
}

// unpacked returns the message ids and bodies of m's tasks: its own for a task alone, its
// tasks' for a pack.
func unpacked(t *testing.T, m rabbit.Message) (ids, bodies []string) {
	t.Helper()
	if m.Type != sendpack.Type {
		return []string{m.MessageID}, []string{string(m.Body)}
	}
	if m.RoutingKey != rabbit.PackedSendKey {
		t.Errorf("pack %s routed with key %q, want %q", m.MessageID, m.RoutingKey, rabbit.PackedSendKey)
	}
	tasks, err := sendpack.Unpack(&rabbit.Delivery{MessageID: m.MessageID, Type: m.Type, Body: m.Body})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range tasks {
		ids, bodies = append(ids, d.MessageID), append(bodies, string(d.Body))
	}
	return ids, bodies
}

// TestRelayPacksSendTasks: the send tasks of a round go in packs of at most PackSize, each
// carrying its tasks' own message ids and bodies; other rows keep their own messages; a
// pack the broker does not confirm leaves exactly its rows for the next round.
func TestRelayPacksSendTasks(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	insertRows(t, db, 8)
	if _, err := db.Pool.Exec(context.Background(), `INSERT INTO outbox (routing_key, message_type, body)
		VALUES ('retry', 'notify.bus.v1.RetryTask', 'retry')`); err != nil {
		t.Fatal(err)
	}
	ids := outboxIDs(t, db)
	pub := &flakyPublisher{} // fails the third message of each call
	r := NewRelay(db.Pool, pub, discard, prometheus.NewRegistry(), Options{BatchSize: 100, PackSize: 3})

	if n, err := r.RelayOnce(context.Background()); err != nil || n != 9 {
		t.Fatalf("RelayOnce = %d, %v; want 9 claimed", n, err)
	}
	// Messages: a pack of rows 0-2, a pack of 3-5, a pack of 6-7 (refused), the retry task.
	if len(pub.sent) != 3 {
		t.Fatalf("published %d messages, want 3 (two packs and the retry task)", len(pub.sent))
	}
	for k, want := range [][]int{{0, 1, 2}, {3, 4, 5}} {
		m := pub.sent[k]
		if prefix := fmt.Sprintf("outbox-pack-%d-3-", ids[want[0]]); m.Type != sendpack.Type || !strings.HasPrefix(m.MessageID, prefix) {
			t.Errorf("message %d is a %q with id %q, want a pack with id %s…", k, m.Type, m.MessageID, prefix)
		}
		gotIDs, gotBodies := unpacked(t, m)
		var wantIDs, wantBodies []string
		for _, i := range want {
			wantIDs = append(wantIDs, fmt.Sprintf("outbox-%d", ids[i]))
			wantBodies = append(wantBodies, fmt.Sprintf("task %d", i+1))
		}
		if !slices.Equal(gotIDs, wantIDs) || !slices.Equal(gotBodies, wantBodies) {
			t.Errorf("pack %d carries %v %q, want %v %q", k, gotIDs, gotBodies, wantIDs, wantBodies)
		}
	}
	if m := pub.sent[2]; m.RoutingKey != "retry" || m.MessageID != fmt.Sprintf("outbox-%d", ids[8]) {
		t.Errorf("third message published = %s to %q, want the retry task on its own", m.MessageID, m.RoutingKey)
	}
	if left := outboxIDs(t, db); !slices.Equal(left, ids[6:8]) {
		t.Errorf("rows left %v, want exactly the refused pack's %v", left, ids[6:8])
	}

	// The next round publishes them: two send tasks are still a pack.
	if _, err := r.RelayOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	if gotIDs, _ := unpacked(t, pub.sent[3]); len(pub.sent) != 4 || len(gotIDs) != 2 {
		t.Errorf("second round published %d messages, the last carrying %v; want one pack of the 2 rows", len(pub.sent)-3, gotIDs)
	}
	if left := rowCount(t, db); left != 0 {
		t.Errorf("%d rows left, want none", left)
	}
}

// TestRelaySendsALoneTaskOnItsOwn: a round with one send task publishes it to the send
// queue as it is, and so does a relay with packing off.
func TestRelaySendsALoneTaskOnItsOwn(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		rows, packSize int
	}{{1, 64}, {5, 1}, {5, 0}} {
		t.Run(fmt.Sprintf("%d rows, pack size %d", tc.rows, tc.packSize), func(t *testing.T) {
			t.Parallel()
			db := pgtest.New(t)
			insertRows(t, db, tc.rows)
			pub := &recorder{}
			r := NewRelay(db.Pool, pub, discard, prometheus.NewRegistry(), Options{PackSize: tc.packSize})
			if _, err := r.RelayOnce(context.Background()); err != nil {
				t.Fatal(err)
			}
			if len(pub.sent) != tc.rows {
				t.Fatalf("published %d messages, want %d", len(pub.sent), tc.rows)
			}
			for _, m := range pub.sent {
				if m.Type != sendpack.TaskType || m.RoutingKey != rabbit.SendKey {
					t.Errorf("published a %q to %q, want a send task to %q", m.Type, m.RoutingKey, rabbit.SendKey)
				}
			}
		})
	}
}
