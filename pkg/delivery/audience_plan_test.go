package delivery

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"notify/pkg/pgtest"
	"notify/pkg/schema"
)

// TestAudiencePageWalksIndexesWithStaleStatistics: with statistics taken while devices and
// deliveries were empty (a new installation's first broadcast), a broadcast's page is read
// through the indexes (devices in device id order, the settled probe by primary key), not by
// reading and sorting every remaining device with a scan of the deliveries for each. Before
// schema.WalkIndexesSQL the plan was a bitmap scan of every device after the cursor, a sort, and a
// sequential scan of deliveries per device: a 100,000-device broadcast at 0.13× its speed.
// The page itself must still be right.
func TestAudiencePageWalksIndexesWithStaleStatistics(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	if _, err := db.Pool.Exec(ctx, "ANALYZE devices; ANALYZE deliveries; ANALYZE preferences"); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Pool.Exec(ctx, `INSERT INTO devices (device_id, user_id, token, platform, app)
		SELECT 'dev-' || lpad(i::text, 5, '0'), 'u' || i, 'tok-' || i, 'android', 'default'
		FROM generate_series(1, 20000) i`); err != nil {
		t.Fatal(err)
	}
	id := uuid.New()
	a := schema.Audience{Kind: schema.AudienceAll, MutedType: "promo"}
	query, args, err := a.UnsettledPage(id, 0, "dev-10000", 500)
	if err != nil {
		t.Fatal(err)
	}
	var plan []string
	err = pgx.BeginTxFunc(ctx, db.Pool, pgx.TxOptions{AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, schema.WalkIndexesSQL); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, "EXPLAIN "+query, args...)
		if err != nil {
			return err
		}
		plan, err = pgx.CollectRows(rows, pgx.RowTo[string])
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	text := strings.Join(plan, "\n")
	for _, bad := range []string{"Seq Scan", "Sort", "Bitmap Heap Scan"} {
		if strings.Contains(text, bad) {
			t.Errorf("the page's plan has a %s:\n%s", bad, text)
		}
	}

	store := NewStore(db.Pool)
	targets, next, err := store.Audience(ctx, &Notification{ID: id, Audience: a}, "dev-10000", 500)
	if err != nil {
		t.Fatal(err)
	}
	if len(targets) != 500 || targets[0].DeviceID != "dev-10001" || targets[499].DeviceID != "dev-10500" || next != "dev-10500" {
		t.Errorf("page after dev-10000: %d targets, %s..%s, next %q; want 500, dev-10001..dev-10500, next dev-10500",
			len(targets), first(targets), last(targets), next)
	}
}

func first(ts []Target) string { return fmt.Sprint(ts[:min(1, len(ts))]) }

func last(ts []Target) string { return fmt.Sprint(ts[max(0, len(ts)-1):]) }
