package delivery

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"notify/pkg/fcm"
	"notify/pkg/pgtest"
	"notify/pkg/schema"
)

// TestBroadcastChunkSkipsProbesOfUnrecordedTokens: a broadcast's page says which tokens had
// no delivery at all when it was read (Target.Unrecorded), and the record of a later chunk
// (the notification has deliveries by then) inserts those without a primary-key probe each:
// the record statement's plan, run for real, probes deliveries by primary key for none of
// the page's 500 tokens (for all 500 when the page's knowledge is not passed on). Counts
// and rows are right either way.
func TestBroadcastChunkSkipsProbesOfUnrecordedTokens(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	store := NewStore(db.Pool)
	const devices = 2 * fcm.MaxMulticast
	if _, err := db.Pool.Exec(ctx, `INSERT INTO devices (device_id, user_id, token, platform)
		SELECT 'dev-' || lpad(i::text, 5, '0'), 'u' || i, 'tok-' || lpad(i::text, 5, '0'), 'android' FROM generate_series(1, $1) i`,
		devices); err != nil {
		t.Fatal(err)
	}
	id := uuid.New()
	if _, err := db.Pool.Exec(ctx, `INSERT INTO notifications (id, caller, type, request, expires_at)
		VALUES ($1, 'test', 'promo', '{}', now() + interval '1 hour')`, id); err != nil {
		t.Fatal(err)
	}
	n := &Notification{ID: id, Audience: schema.Audience{Kind: schema.AudienceAll, MutedType: "promo"}}

	first, after, err := store.Audience(ctx, n, "", fcm.MaxMulticast)
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Record(ctx, id, delivered(first)); err != nil {
		t.Fatal(err)
	}
	second, _, err := store.Audience(ctx, n, after, fcm.MaxMulticast)
	if err != nil {
		t.Fatal(err)
	}
	if len(second) != fcm.MaxMulticast {
		t.Fatalf("second page: %d targets, want %d", len(second), fcm.MaxMulticast)
	}
	for _, tg := range append(first, second...) {
		if !tg.Unrecorded {
			t.Fatalf("target %+v of a page read before any of its deliveries: not Unrecorded", tg)
		}
	}

	probes := func(outcomes []Outcome) int {
		t.Helper()
		var plan []byte
		err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, lockSQL, schema.UUIDs([]uuid.UUID{id})); err != nil {
				return err
			}
			if err := tx.QueryRow(ctx, "EXPLAIN (ANALYZE, FORMAT JSON) "+recordSQL, newRecordArgs([]Record{{ID: id, Outcomes: outcomes}}).sqlArgs()...).Scan(&plan); err != nil {
				return err
			}
			return errRollback
		})
		if err != errRollback {
			t.Fatal(err)
		}
		var nodes []planNode
		if err := json.Unmarshal(plan, &nodes); err != nil {
			t.Fatal(err)
		}
		return nodes[0].Plan.loops("Index Scan", "deliveries_pkey")
	}
	if got := probes(delivered(second)); got != 0 {
		t.Errorf("recording a later chunk of unrecorded tokens: %d primary-key probes of deliveries, want 0", got)
	}
	known := delivered(second)
	for i := range known {
		known[i].Unrecorded = false
	}
	if got := probes(known); got < fcm.MaxMulticast {
		t.Errorf("recording a later chunk without knowing: %d primary-key probes of deliveries, want one per token (%d)",
			got, fcm.MaxMulticast)
	}

	if err := store.Record(ctx, id, delivered(second)); err != nil {
		t.Fatal(err)
	}
	var total, ok, rows int
	if err := db.Pool.QueryRow(ctx, `SELECT total, delivered, (SELECT count(*) FROM deliveries WHERE notification_id = $1)
		FROM notifications WHERE id = $1`, id).Scan(&total, &ok, &rows); err != nil {
		t.Fatal(err)
	}
	if total != devices || ok != devices || rows != devices {
		t.Errorf("after both chunks: total %d, delivered %d, %d deliveries; want %d each", total, ok, rows, devices)
	}
}

// TestUnrecordedTokenRecordedMeanwhile: a token read as unrecorded that got a delivery
// before its record (another sender of the same task, the token met again on a later page)
// is recorded as any other: the record is made again looking for every token, its outcome
// replaces the one there, and it is counted once. A page read after that delivery does not
// call the token unrecorded.
func TestUnrecordedTokenRecordedMeanwhile(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	store := NewStore(db.Pool)
	if _, err := db.Pool.Exec(ctx, `INSERT INTO devices (device_id, user_id, token, platform) VALUES
		('d1', 'u1', 'tok-1', 'android'), ('d2', 'u2', 'tok-2', 'android'), ('d3', 'u3', 'tok-3', 'android')`); err != nil {
		t.Fatal(err)
	}
	id := uuid.New()
	if _, err := db.Pool.Exec(ctx, `INSERT INTO notifications (id, caller, type, request, expires_at)
		VALUES ($1, 'test', 'promo', '{}', now() + interval '1 hour')`, id); err != nil {
		t.Fatal(err)
	}
	n := &Notification{ID: id, Audience: schema.Audience{Kind: schema.AudienceAll}}
	page, _, err := store.Audience(ctx, n, "", 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(page) != 3 || !page[0].Unrecorded || !page[1].Unrecorded || !page[2].Unrecorded {
		t.Fatalf("page before any delivery: %+v; want d1..d3, all unrecorded", page)
	}
	// Meanwhile tok-1 got a delivery: failed, by a writer that did not dead-letter it (so it
	// is still to be sent: the page below reads it again).
	if _, err := db.Pool.Exec(ctx, `INSERT INTO deliveries (notification_id, token, device_id, user_id, outcome, attempts)
		VALUES ($1, 'tok-1', 'd1', 'u1', 'failed', 1)`, id); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Pool.Exec(ctx, `UPDATE notifications SET total = 1, failed = 1 WHERE id = $1`, id); err != nil {
		t.Fatal(err)
	}
	again, _, err := store.Audience(ctx, n, "", 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(again) != 3 || again[0].Unrecorded || !again[1].Unrecorded {
		t.Errorf("page after tok-1 was recorded failed: %+v; want tok-1 not unrecorded, tok-2 unrecorded", again)
	}

	status, err := store.RecordFinal(ctx, id, delivered(page))
	if err != nil {
		t.Fatalf("record a page whose tok-1 got a delivery since it was read: %v", err)
	}
	var total, ok, failed, rows int
	if err := db.Pool.QueryRow(ctx, `SELECT total, delivered, failed, (SELECT count(*) FROM deliveries WHERE notification_id = $1)
		FROM notifications WHERE id = $1`, id).Scan(&total, &ok, &failed, &rows); err != nil {
		t.Fatal(err)
	}
	if status != schema.StatusDelivered || total != 3 || ok != 3 || failed != 0 || rows != 3 {
		t.Errorf("status %s, total %d, delivered %d, failed %d, %d deliveries; want delivered, 3, 3, 0, 3",
			status, total, ok, failed, rows)
	}
}

var errRollback = fmt.Errorf("rollback")

// planNode is a node of EXPLAIN (FORMAT JSON)'s plan.
type planNode struct {
	Plan planTree `json:"Plan"`
}

type planTree struct {
	NodeType     string     `json:"Node Type"`
	IndexName    string     `json:"Index Name"`
	RelationName string     `json:"Relation Name"`
	ActualLoops  int        `json:"Actual Loops"`
	Plans        []planTree `json:"Plans"`
}

// seqScans is how many times sequential scans of table ran in the tree.
func (p planTree) seqScans(table string) int {
	n := 0
	if p.NodeType == "Seq Scan" && p.RelationName == table {
		n = p.ActualLoops
	}
	for _, c := range p.Plans {
		n += c.seqScans(table)
	}
	return n
}

// loops is how many times nodes of type nodeType on index ran in the tree.
func (p planTree) loops(nodeType, index string) int {
	n := 0
	if p.NodeType == nodeType && p.IndexName == index {
		n = p.ActualLoops
	}
	for _, c := range p.Plans {
		n += c.loops(nodeType, index)
	}
	return n
}

// TestPageProbesPreferencesOnlyWhenSomeoneHasThem: a broadcast that honours preferences
// probes each device's user's preferences only when some user has preferences at all: with
// none, its page's executed plan reads preferences once, not once per device; with one
// user's, every device is probed again and that user's device is muted.
func TestPageProbesPreferencesOnlyWhenSomeoneHasThem(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	const devices = fcm.MaxMulticast
	if _, err := db.Pool.Exec(ctx, `INSERT INTO devices (device_id, user_id, token, platform)
		SELECT 'dev-' || lpad(i::text, 5, '0'), 'u' || i, 'tok-' || i, 'android' FROM generate_series(1, $1) i`, devices); err != nil {
		t.Fatal(err)
	}
	id := uuid.New()
	a := schema.Audience{Kind: schema.AudienceAll, MutedType: "promo"}
	probes := func() int {
		t.Helper()
		query, args, err := a.UnsettledPage(id, 0, "", devices)
		if err != nil {
			t.Fatal(err)
		}
		var plan []byte
		err = pgx.BeginTxFunc(ctx, db.Pool, pgx.TxOptions{AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, schema.WalkIndexesSQL); err != nil {
				return err
			}
			return tx.QueryRow(ctx, "EXPLAIN (ANALYZE, FORMAT JSON) "+query, args...).Scan(&plan)
		})
		if err != nil {
			t.Fatal(err)
		}
		var nodes []planNode
		if err := json.Unmarshal(plan, &nodes); err != nil {
			t.Fatal(err)
		}
		p := nodes[0].Plan
		return p.loops("Index Scan", "preferences_pkey") + p.loops("Index Only Scan", "preferences_pkey") + p.seqScans("preferences")
	}
	if got := probes(); got > 1 {
		t.Errorf("page of %d devices with no preferences anywhere: preferences read %d times, want at most once", devices, got)
	}
	if _, err := db.Pool.Exec(ctx, `INSERT INTO preferences (user_id, muted_types) VALUES ('u7', '{promo}')`); err != nil {
		t.Fatal(err)
	}
	if got := probes(); got < devices {
		t.Errorf("page of %d devices once u7 has preferences: preferences read %d times, want once per device", devices, got)
	}
	targets, _, err := NewStore(db.Pool).Audience(ctx, &Notification{ID: id, Audience: a}, "", devices)
	if err != nil {
		t.Fatal(err)
	}
	for _, tg := range targets {
		if tg.Muted != (tg.UserID == "u7") {
			t.Errorf("target %+v: muted %v, want %v", tg, tg.Muted, tg.UserID == "u7")
		}
	}
}
