package outbox

import (
	"context"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"notify/pkg/pgtest"
	"notify/pkg/rabbit"
	"notify/pkg/schema"
)

// refusing confirms messages except every fifth one it is given (across calls), and
// records the MessageIDs it confirmed in the order it confirmed them.
type refusing struct {
	mu        sync.Mutex
	n         int
	confirmed []string
}

func (p *refusing) Publish(_ context.Context, msgs ...rabbit.Message) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	pe := &rabbit.PublishError{Total: len(msgs)}
	for i, m := range msgs {
		p.n++
		if p.n%5 == 0 {
			pe.Failed = append(pe.Failed, rabbit.FailedMessage{Index: i, MessageID: m.MessageID, Err: rabbit.ErrNacked})
			continue
		}
		p.confirmed = append(p.confirmed, m.MessageID)
	}
	if len(pe.Failed) > 0 {
		return pe
	}
	return nil
}

// TestEventsOfANotificationArePublishedInOrder: three relays with overlapping rounds and
// small batches share an outbox holding five status events for each of 200 notifications
// (with send tasks between them), while the broker refuses every fifth message. Every
// event is confirmed, and no event is confirmed before every earlier event of its
// notification was.
func TestEventsOfANotificationArePublishedInOrder(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	const notifications, events = 200, 5
	ids := make([]uuid.UUID, notifications)
	for i := range ids {
		ids[i] = uuid.New()
	}
	// Round k writes event k of every notification, then a send task for each: the events
	// of one notification are far apart in id order, as when they come from separate
	// transactions.
	for k := range events {
		if _, err := db.Pool.Exec(ctx, `INSERT INTO outbox (notification_id, routing_key, message_type, body)
			SELECT id, 'e.t', '`+schema.StatusEventType+`',
				convert_to(json_build_object('notificationId', id, 'status', 'pending', 'type', $2::text)::text, 'UTF8')
			FROM unnest($1::uuid[]) id`, ids, strconv.Itoa(k)); err != nil {
			t.Fatal(err)
		}
		insertRows(t, db, notifications)
	}

	// The outbox ids of each notification's events, in the order they were written (read
	// before the relays delete them).
	rows, err := db.Pool.Query(ctx, `SELECT id, notification_id FROM outbox WHERE message_type = $1 ORDER BY id`, schema.StatusEventType)
	if err != nil {
		t.Fatal(err)
	}
	written := map[string][]string{} // notification -> MessageIDs of its events, in order
	of := map[string]string{}        // MessageID -> notification
	for rows.Next() {
		var id int64
		var n uuid.UUID
		if err := rows.Scan(&id, &n); err != nil {
			t.Fatal(err)
		}
		m := "outbox-" + strconv.FormatInt(id, 10)
		written[n.String()] = append(written[n.String()], m)
		of[m] = n.String()
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(written) != notifications {
		t.Fatalf("events of %d notifications in the outbox, want %d", len(written), notifications)
	}

	pub := &refusing{}
	runCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for i := range 3 {
		// The third keeps published rows (OUTBOX_RETENTION), as a replica with another
		// setting might: its marked rows must hold back later events no more than deleted ones.
		var retention time.Duration
		if i == 2 {
			retention = time.Hour
		}
		r := NewRelay(db.Pool, pub, discard, prometheus.NewRegistry(), Options{
			BatchSize: 37 + 20*i, Concurrency: 3, PollInterval: 20 * time.Millisecond, Retention: retention,
		})
		wg.Go(func() { _ = r.Run(runCtx) })
	}
	deadline := time.Now().Add(2 * time.Minute)
	for unpublished(t, db) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d rows still unpublished after 2 minutes", unpublished(t, db))
		}
		time.Sleep(20 * time.Millisecond)
	}
	stop()
	wg.Wait()

	next := map[string]int{} // notification -> how many of its events were confirmed so far
	for _, m := range pub.confirmed {
		n, ok := of[m]
		if !ok {
			continue // a send task
		}
		i := next[n]
		switch {
		case i < events && written[n][i] == m:
			next[n]++
		case slices.Contains(written[n][:i], m):
			// A confirmed event published again (at-least-once): allowed.
		default:
			t.Fatalf("notification %s: %s confirmed after %d of its events %v", n, m, i, written[n])
		}
	}
	for n, i := range next {
		if i != events {
			t.Errorf("notification %s: %d of %d events confirmed", n, i, events)
		}
	}
	if len(next) != notifications {
		t.Errorf("events of %d notifications confirmed, want %d", len(next), notifications)
	}
}
