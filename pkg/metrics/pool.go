package metrics

import (
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
)

// PoolCollector exports a pgx pool's statistics as notify_db_pool_*: how many connections
// are in use, idle and open against the maximum, and how often and how long callers waited
// for one. A pool that is always exhausted (acquires waiting) limits throughput before
// PostgreSQL does.
//
// It reads pool.Stat() at scrape time, so the numbers are as fresh as the scrape.
type PoolCollector struct {
	pool *pgxpool.Pool

	acquired, idle, total, max, constructing                    *prometheus.Desc
	acquires, acquireSeconds, waits, waitSeconds, canceled, new *prometheus.Desc
	lifetimeDestroys, idleDestroys                              *prometheus.Desc
}

// NewPoolCollector returns a collector for pool, to register on the service's registry.
func NewPoolCollector(pool *pgxpool.Pool) *PoolCollector {
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc("notify_db_pool_"+name, help, nil, nil)
	}
	return &PoolCollector{
		pool:             pool,
		acquired:         d("acquired_conns", "Connections currently in use."),
		idle:             d("idle_conns", "Connections open and idle."),
		total:            d("total_conns", "Connections open: acquired, idle and being opened."),
		max:              d("max_conns", "Most connections the pool opens (pool_max_conns in DATABASE_URL)."),
		constructing:     d("constructing_conns", "Connections being opened."),
		acquires:         d("acquires_total", "Connections acquired from the pool."),
		acquireSeconds:   d("acquire_seconds_total", "Time spent acquiring connections, waiting included."),
		waits:            d("acquire_waits_total", "Acquires that found no idle connection and waited for one to be opened or released."),
		waitSeconds:      d("acquire_wait_seconds_total", "Time spent in acquires that waited."),
		canceled:         d("canceled_acquires_total", "Acquires given up (their context ended) before a connection was free."),
		new:              d("new_conns_total", "Connections opened."),
		lifetimeDestroys: d("max_lifetime_destroys_total", "Connections closed for reaching pool_max_conn_lifetime."),
		idleDestroys:     d("max_idle_destroys_total", "Connections closed for idling longer than pool_max_conn_idle_time."),
	}
}

// Describe implements prometheus.Collector.
func (c *PoolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.acquired, c.idle, c.total, c.max, c.constructing, c.acquires, c.acquireSeconds,
		c.waits, c.waitSeconds, c.canceled, c.new, c.lifetimeDestroys, c.idleDestroys} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *PoolCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.pool.Stat()
	gauge := func(d *prometheus.Desc, v int32) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v))
	}
	counter := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v)
	}
	gauge(c.acquired, s.AcquiredConns())
	gauge(c.idle, s.IdleConns())
	gauge(c.total, s.TotalConns())
	gauge(c.max, s.MaxConns())
	gauge(c.constructing, s.ConstructingConns())
	counter(c.acquires, float64(s.AcquireCount()))
	counter(c.acquireSeconds, s.AcquireDuration().Seconds())
	counter(c.waits, float64(s.EmptyAcquireCount()))
	counter(c.waitSeconds, s.EmptyAcquireWaitTime().Seconds())
	counter(c.canceled, float64(s.CanceledAcquireCount()))
	counter(c.new, float64(s.NewConnsCount()))
	counter(c.lifetimeDestroys, float64(s.MaxLifetimeDestroyCount()))
	counter(c.idleDestroys, float64(s.MaxIdleDestroyCount()))
}
