package delivery

import (
	"context"
	"testing"

	"notify/pkg/schema"
)

// TestSendChunkOfCancelledNotification: a chunk of a notification cancelled after its
// first chunk was recorded is neither sent nor recorded, and the outcomes already recorded
// do not change the status back.
func TestSendChunkOfCancelledNotification(t *testing.T) {
	t.Parallel()
	db, store, d, pub, n := setup(t, 3)
	ctx := context.Background()
	targets, _, err := store.Audience(ctx, n, "", 500)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.SendChunk(ctx, n, targets[:2], 1, false); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Pool.Exec(ctx, "UPDATE notifications SET status = $2 WHERE id = $1", n.ID, schema.StatusCancelled); err != nil {
		t.Fatal(err)
	}
	sent := len(pub.msgs)
	sum, err := d.SendChunk(ctx, n, targets[2:], 1, true)
	if err != nil {
		t.Fatal(err)
	}
	if !sum.Cancelled || sum.Delivered+sum.Invalid+sum.Retrying+sum.Failed != 0 || len(pub.msgs) != sent {
		t.Errorf("SendChunk after Cancel = %+v, %d messages handed off; want cancelled, nothing sent", sum, len(pub.msgs)-sent)
	}
	var total int64
	var status string
	if err := db.Pool.QueryRow(ctx, "SELECT total, status FROM notifications WHERE id = $1", n.ID).Scan(&total, &status); err != nil {
		t.Fatal(err)
	}
	if total != 2 || status != schema.StatusCancelled {
		t.Errorf("after the refused chunk: %d tokens recorded, status %s; want the first chunk's 2, cancelled", total, status)
	}
	// The sender's closing write keeps it cancelled too.
	if st, err := store.Finish(ctx, n.ID); err != nil || st != schema.StatusCancelled {
		t.Errorf("Finish = %q, %v; want cancelled", st, err)
	}
}
