package delivery

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"notify/pkg/fcm"
	"notify/pkg/pgtest"
	"notify/pkg/schema"
)

// Benchmarks of the database side of delivery against a real PostgreSQL: what the sender
// does per chunk besides talking to FCM. Figures to read: outcomes/s and tokens/s.

// benchToken is an FCM-sized token (about 150 characters), as the indexes see in production.
func benchToken(prefix string, i int) string {
	return fmt.Sprintf("%s-%09d:%0140d", prefix, i, i)
}

func benchNotification(b *testing.B, pool *pgxpool.Pool, request string) uuid.UUID {
	b.Helper()
	id := uuid.New()
	if _, err := pool.Exec(context.Background(), `INSERT INTO notifications (id, caller, type, request, expires_at)
		VALUES ($1, 'bench', 'bench', $2, now() + interval '1 hour')`, id, request); err != nil {
		b.Fatal(err)
	}
	return id
}

// benchDevices registers n devices, device i with token benchToken(prefix, i).
func benchDevices(b *testing.B, pool *pgxpool.Pool, prefix string, n int) []Target {
	b.Helper()
	targets := make([]Target, n)
	ids, users, toks := make([]string, n), make([]string, n), make([]string, n)
	for i := range n {
		targets[i] = Target{Token: benchToken(prefix, i), DeviceID: fmt.Sprintf("%s-device-%09d", prefix, i), UserID: fmt.Sprintf("%s-user-%d", prefix, i)}
		ids[i], users[i], toks[i] = targets[i].DeviceID, targets[i].UserID, targets[i].Token
	}
	if _, err := pool.Exec(context.Background(), `INSERT INTO devices (device_id, user_id, token, platform)
		SELECT * , 'android' FROM unnest($1::text[], $2::text[], $3::text[])`, ids, users, toks); err != nil {
		b.Fatal(err)
	}
	return targets
}

// benchHistory gives the deliveries table what a running system has: many small
// notifications (two tokens each), analyzed. A new broadcast's rows are then not in the
// planner's statistics, as in production.
func benchHistory(b *testing.B, pool *pgxpool.Pool, notifications int) {
	b.Helper()
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `
		WITH n AS (
			INSERT INTO notifications (id, caller, type, request, expires_at, status, total, delivered)
			SELECT gen_random_uuid(), 'history', 'history', '{}', now(), 'delivered', 2, 2 FROM generate_series(1, $1)
			RETURNING id
		)
		INSERT INTO deliveries (notification_id, token, device_id, user_id, outcome, attempts)
		SELECT n.id, 'history-' || n.id || '-' || k, NULL, NULL, 'delivered', 1 FROM n, generate_series(1, 2) k`, notifications); err != nil {
		b.Fatal(err)
	}
	if _, err := pool.Exec(ctx, "ANALYZE"); err != nil {
		b.Fatal(err)
	}
}

func delivered(targets []Target) []Outcome {
	out := make([]Outcome, len(targets))
	for i, t := range targets {
		out[i] = Outcome{Target: t, Outcome: schema.OutcomeDelivered, Attempts: 1}
	}
	return out
}

// BenchmarkRecord writes one chunk's 500 outcomes with Store.Record:
//   - new-notification: each chunk is a notification of its own (user-list notifications);
//   - broadcast-at-100k: chunks of a broadcast that already holds 100,000 outcomes;
//   - invalid-10pct: a tenth of the tokens are dead and their devices deactivated;
//   - rerecord: the same 500 tokens again (retries updating their rows).
func BenchmarkRecord(b *testing.B) {
	const chunk = fcm.MaxMulticast
	ctx := context.Background()
	b.Run("new-notification", func(b *testing.B) {
		db := pgtest.New(b)
		store := NewStore(db.Pool)
		targets := benchDevices(b, db.Pool, "own", chunk)
		outcomes := delivered(targets)
		ids := make([]uuid.UUID, b.N)
		for i := range ids {
			ids[i] = benchNotification(b, db.Pool, "{}")
		}
		b.ResetTimer()
		pg := startPGCPU(b, db.Pool)
		for i := range b.N {
			if err := store.Record(ctx, ids[i], outcomes); err != nil {
				b.Fatal(err)
			}
		}
		pg.report(b, b.N*chunk, "outcome")
		b.ReportMetric(float64(b.N*chunk)/b.Elapsed().Seconds(), "outcomes/s")
	})
	b.Run("broadcast-at-100k", func(b *testing.B) {
		db := pgtest.New(b)
		store := NewStore(db.Pool)
		benchHistory(b, db.Pool, 20_000)
		id := benchNotification(b, db.Pool, "{}")
		const already = 100_000
		if err := recordAll(ctx, store, id, benchTargets("before", already)); err != nil {
			b.Fatal(err)
		}
		next := benchTargets("after", b.N*chunk)
		b.ResetTimer()
		pg := startPGCPU(b, db.Pool)
		for i := range b.N {
			if err := store.Record(ctx, id, delivered(next[i*chunk:(i+1)*chunk])); err != nil {
				b.Fatal(err)
			}
		}
		pg.report(b, b.N*chunk, "outcome")
		b.ReportMetric(float64(b.N*chunk)/b.Elapsed().Seconds(), "outcomes/s")
	})
	b.Run("invalid-10pct", func(b *testing.B) {
		db := pgtest.New(b)
		store := NewStore(db.Pool)
		targets := benchDevices(b, db.Pool, "mixed", b.N*chunk)
		ids := make([]uuid.UUID, b.N)
		for i := range ids {
			ids[i] = benchNotification(b, db.Pool, "{}")
		}
		b.ResetTimer()
		pg := startPGCPU(b, db.Pool)
		defer pg.report(b, b.N*chunk, "outcome")
		for i := range b.N {
			outcomes := delivered(targets[i*chunk : (i+1)*chunk])
			for j := 0; j < len(outcomes); j += 10 {
				outcomes[j].Outcome, outcomes[j].ErrorCode, outcomes[j].ErrorMessage = schema.OutcomeInvalid, "UNREGISTERED", "Requested entity was not found."
			}
			if err := store.Record(ctx, ids[i], outcomes); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N*chunk)/b.Elapsed().Seconds(), "outcomes/s")
	})
	b.Run("rerecord", func(b *testing.B) {
		db := pgtest.New(b)
		store := NewStore(db.Pool)
		id := benchNotification(b, db.Pool, "{}")
		outcomes := delivered(benchTargets("again", chunk))
		for i := range outcomes {
			outcomes[i].Outcome, outcomes[i].ErrorCode = schema.OutcomeRetrying, "UNAVAILABLE"
		}
		if err := store.Record(ctx, id, outcomes); err != nil {
			b.Fatal(err)
		}
		b.ResetTimer()
		pg := startPGCPU(b, db.Pool)
		defer pg.report(b, b.N*chunk, "outcome")
		for i := range b.N {
			for j := range outcomes {
				outcomes[j].Attempts = i + 2
			}
			if err := store.Record(ctx, id, outcomes); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N*chunk)/b.Elapsed().Seconds(), "outcomes/s")
	})
}

// benchTargets are n raw tokens (no devices).
func benchTargets(prefix string, n int) []Target {
	targets := make([]Target, n)
	for i := range targets {
		targets[i] = Target{Token: benchToken(prefix, i)}
	}
	return targets
}

func recordAll(ctx context.Context, store *Store, id uuid.UUID, targets []Target) error {
	for _, c := range chunkTargets(targets) {
		if err := store.Record(ctx, id, delivered(c)); err != nil {
			return err
		}
	}
	return nil
}

func chunkTargets(targets []Target) [][]Target {
	var out [][]Target
	for len(targets) > fcm.MaxMulticast {
		out = append(out, targets[:fcm.MaxMulticast])
		targets = targets[fcm.MaxMulticast:]
	}
	return append(out, targets)
}

// BenchmarkBroadcastPages is the sender's database work for one broadcast, FCM left out:
// page through the audience with Store.Audience (500 devices a page, skipping settled
// tokens) and record each page as delivered with Store.Record, until the audience ends.
// The deliveries table holds an analyzed history of small notifications first, so the
// planner sees what it sees in production: nothing about the new broadcast's rows.
//
// Read tokens/s across the sizes: a path that is linear in the audience keeps it flat. The
// slowest Audience page (max-page-ms) shows where the time goes when it is not.
func BenchmarkBroadcastPages(b *testing.B) {
	ctx := context.Background()
	for _, devices := range []int{4_000, 16_000} {
		b.Run(fmt.Sprintf("devices=%d", devices), func(b *testing.B) {
			db := pgtest.New(b)
			store := NewStore(db.Pool)
			benchHistory(b, db.Pool, 20_000)
			benchDevices(b, db.Pool, "fan", devices)
			if _, err := db.Pool.Exec(ctx, "ANALYZE devices"); err != nil {
				b.Fatal(err)
			}
			var slowest time.Duration
			b.ResetTimer()
			pg := startPGCPU(b, db.Pool)
			for range b.N {
				n := &Notification{ID: benchNotification(b, db.Pool, `{"recipients":{"allDevices":{}}}`), Audience: schema.Audience{Kind: schema.AudienceAll}}
				sent, after := 0, ""
				for {
					start := time.Now()
					targets, next, err := store.Audience(ctx, n, after, fcm.MaxMulticast)
					slowest = max(slowest, time.Since(start))
					if err != nil {
						b.Fatal(err)
					}
					if len(targets) > 0 {
						if err := store.Record(ctx, n.ID, delivered(targets)); err != nil {
							b.Fatal(err)
						}
					}
					sent += len(targets)
					if next == "" {
						break
					}
					after = next
				}
				if sent != devices {
					b.Fatalf("sent to %d of %d devices", sent, devices)
				}
			}
			pg.report(b, b.N*devices, "token")
			b.ReportMetric(float64(b.N*devices)/b.Elapsed().Seconds(), "tokens/s")
			b.ReportMetric(float64(slowest.Microseconds())/1000, "max-page-ms")
		})
	}
}

// pgCPU measures the CPU of PostgreSQL's backends serving a benchmark's database.
type pgCPU struct {
	cpu *pgtest.BackendCPU
	err error
}

func startPGCPU(b *testing.B, pool *pgxpool.Pool) pgCPU {
	cpu, err := pgtest.StartBackendCPU(context.Background(), pool)
	return pgCPU{cpu, err}
}

// report reports PostgreSQL's CPU microseconds per unit (pg-cpu-us/unit) over n units.
func (p pgCPU) report(b *testing.B, n int, unit string) {
	used, err := time.Duration(0), p.err
	if err == nil {
		used, err = p.cpu.Used(context.Background())
	}
	if err != nil {
		b.Logf("PostgreSQL's CPU not measured: %v", err)
		return
	}
	b.ReportMetric(float64(used.Microseconds())/float64(n), "pg-cpu-us/"+unit)
}
