package server

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"notify/pkg/pgtest"
)

// TestListNotificationsByStatusReadsFewPages: the listing of every status, first page and
// a later one, is served by an index that holds that status in order, though the indexes
// of the common statuses are partial (migration 0017_b): on 20,000 analyzed notifications,
// almost all delivered, a page of 50 reads a few dozen buffers, not the table or a whole
// index filtered row by row (thousands). The plans are those of ListNotifications' own
// query, generic ones as well as custom (the status is a literal).
func TestListNotificationsByStatusReadsFewPages(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	if _, err := db.Pool.Exec(ctx, `
		INSERT INTO notifications (id, caller, type, request, expires_at, created_at, updated_at, status)
		SELECT gen_random_uuid(), 'c', 't' || (i % 10), '{}', now() + interval '1 day',
			now() - make_interval(secs => 30000 - i), now() - make_interval(secs => 30000 - i),
			CASE WHEN i <= 20000 THEN 'delivered'
				ELSE (ARRAY['pending', 'retrying', 'failed', 'expired', 'cancelled', 'scheduled'])[i % 6 + 1] END
		FROM generate_series(1, 20360) i`); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Pool.Exec(ctx, "ANALYZE notifications"); err != nil {
		t.Fatal(err)
	}
	for name := range statusNames {
		for _, paged := range []bool{false, true} {
			for _, mode := range []string{"force_custom_plan", "force_generic_plan"} {
				var where conditions
				where.addStatus(name)
				args := "51" // the arguments as literals, for EXECUTE
				if paged {
					at := time.Now().Add(-time.Hour)
					where.add("(created_at, id) < (?, ?)", at, "ffffffff-ffff-ffff-ffff-ffffffffffff")
					args = "'" + at.Format(time.RFC3339Nano) + "', 'ffffffff-ffff-ffff-ffff-ffffffffffff', 51"
				}
				query := listNotificationsSQL(&where, 51)
				plan, buffers, err := explain(ctx, db, mode, query, args)
				if err != nil {
					t.Fatal(err)
				}
				if buffers == 0 || buffers > 200 || strings.Contains(plan, "Seq Scan") {
					t.Errorf("status %s (paged %v, %s): %d buffers; plan:\n%s", name, paged, mode, buffers, plan)
				}
			}
		}
	}
}

// explain runs query as a prepared statement planned as mode (plan_cache_mode) says, with
// args (literals), and returns its plan and the buffers it read or hit.
func explain(ctx context.Context, db *pgtest.DB, mode, query, args string) (string, int, error) {
	tx, err := db.Pool.Begin(ctx)
	if err != nil {
		return "", 0, err
	}
	defer tx.Rollback(ctx) //nolint:errcheck // read only
	for _, stmt := range []string{"SET LOCAL plan_cache_mode = " + mode, "DEALLOCATE ALL", "PREPARE list AS " + query} {
		if _, err := tx.Exec(ctx, stmt, pgx.QueryExecModeSimpleProtocol); err != nil {
			return "", 0, fmt.Errorf("%s: %w", stmt, err)
		}
	}
	rows, err := tx.Query(ctx, "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF, SUMMARY OFF) EXECUTE list("+args+")",
		pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		return "", 0, err
	}
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return "", 0, err
	}
	for _, line := range lines { // the first Buffers line is the whole plan's
		if strings.Contains(line, "Buffers: shared") {
			return strings.Join(lines, "\n"), buffer(line, "hit=") + buffer(line, "read="), nil
		}
	}
	return strings.Join(lines, "\n"), 0, nil
}

// buffer is the count after key (e.g. "hit=") in an EXPLAIN Buffers line, 0 if absent.
func buffer(line, key string) int {
	i := strings.Index(line, key)
	if i < 0 {
		return 0
	}
	n := 0
	for _, r := range line[i+len(key):] {
		if r < '0' || r > '9' {
			break
		}
		n = n*10 + int(r-'0')
	}
	return n
}
