package pace

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"notify/pkg/pgtest"
)

// BenchmarkTake: 8 concurrent callers reserving grants of one app whose quota they never
// reach (nothing sleeps), as the workers of a sender do once per batch. Read ns/op (the
// reservations serialize on the app's row) and PostgreSQL's CPU per reservation.
func BenchmarkTake(b *testing.B) {
	db := pgtest.New(b)
	budget := New(db.Pool, []App{{Name: "a", RatePerMinute: 100_000_000}}, prometheus.NewRegistry())
	budget.sleep = func(context.Context, time.Duration) error { return nil }
	ctx := context.Background()
	if err := budget.Take(ctx, "a", 1); err != nil { // the app's row
		b.Fatal(err)
	}
	b.SetParallelism(4) // 8 callers on 2 CPUs
	b.ResetTimer()
	pg, pgErr := pgtest.StartBackendCPU(ctx, db.Pool)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := budget.Take(ctx, "a", 1); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	if pgErr == nil {
		used, err := pg.Used(ctx)
		if err == nil {
			b.ReportMetric(float64(used.Microseconds())/float64(b.N), "pg-cpu-us/op")
		}
	}
}
