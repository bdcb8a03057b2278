package metrics

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"notify/pkg/testenv"
)

// TestPoolCollector holds both connections of a two-connection pool and makes a third
// acquire wait and give up: the gauges show the pool exhausted and the counters the wait.
func TestPoolCollector(t *testing.T) {
	t.Parallel()
	cfg, err := pgxpool.ParseConfig(testenv.DatabaseURL(t))
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns, cfg.MinConns = 2, 0
	pool, err := pgxpool.NewWithConfig(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewPoolCollector(pool))

	for range 2 {
		c, err := pool.Acquire(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Release()
	}
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if c, err := pool.Acquire(ctx); !errors.Is(err, context.DeadlineExceeded) {
		if c != nil {
			c.Release()
		}
		t.Fatalf("third Acquire of a 2-connection pool = %v, want it to wait and give up", err)
	}

	got := map[string]float64{}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		m := f.GetMetric()[0]
		got[f.GetName()] = m.GetGauge().GetValue() + m.GetCounter().GetValue()
	}
	want := map[string]float64{
		"notify_db_pool_acquired_conns":              2,
		"notify_db_pool_idle_conns":                  0,
		"notify_db_pool_total_conns":                 2,
		"notify_db_pool_max_conns":                   2,
		"notify_db_pool_constructing_conns":          0,
		"notify_db_pool_acquires_total":              2,
		"notify_db_pool_acquire_waits_total":         2, // each first acquire found no idle connection
		"notify_db_pool_canceled_acquires_total":     1,
		"notify_db_pool_new_conns_total":             2,
		"notify_db_pool_max_lifetime_destroys_total": 0,
		"notify_db_pool_max_idle_destroys_total":     0,
	}
	for _, name := range []string{"notify_db_pool_acquire_seconds_total", "notify_db_pool_acquire_wait_seconds_total"} {
		if got[name] <= 0 {
			t.Errorf("%s = %v, want > 0", name, got[name])
		}
		delete(got, name)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("pool metrics (-want +got):\n%s", diff)
	}
}
