// Package jobs runs the producer's periodic maintenance (the stale-token sweep, the
// stuck-notification re-drive and the retention of old notifications) in exactly one
// replica at a time.
package jobs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"
)

// Job is one periodic task.
type Job struct {
	// Name names the job in logs and metrics.
	Name string
	// LockKey is the PostgreSQL advisory lock that makes the job run in one replica at a
	// time; every job has its own.
	LockKey int64
	// Interval is the time between two attempts to run the job.
	Interval time.Duration
	// Run does the work on conn, the connection that holds the job's lock. Doing the work
	// on that connection means the work cannot outlive the lock: if the connection dies,
	// the lock is released and the work's next statement fails.
	Run func(ctx context.Context, conn *pgx.Conn) error
}

// Lock keys of the producer's jobs ("notify" and a job number).
const (
	StaleTokensLockKey int64 = 0x6e6f746966790001
	RedriveLockKey     int64 = 0x6e6f746966790002
	RetentionLockKey   int64 = 0x6e6f746966790003
)

// Runner runs jobs. Any number of replicas run a Runner with the same jobs: each attempt
// opens a dedicated connection, takes the job's lock with pg_try_advisory_lock, and runs
// the job only if it got the lock, holding it (and the connection) until the job returns.
// A replica that finds the lock taken skips that attempt; nothing waits.
type Runner struct {
	pool *pgxpool.Pool
	jobs []Job
	log  *slog.Logger

	runs        *prometheus.CounterVec
	lastSuccess *prometheus.GaugeVec
	interval    *prometheus.GaugeVec
}

// NewRunner returns a runner of jobs and registers its metrics.
func NewRunner(pool *pgxpool.Pool, log *slog.Logger, reg prometheus.Registerer, jobs ...Job) *Runner {
	r := &Runner{
		pool: pool, jobs: jobs, log: log,
		runs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "notify_job_runs_total", Help: "Periodic job attempts, by job name and result (ok, failed, locked: another replica ran it).",
		}, []string{"name", "result"}),
		lastSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "notify_job_last_success_timestamp_seconds", Help: "When this replica last ran the job successfully, by job name.",
		}, []string{"name"}),
		// The staleness alert (NotifyJobNotSucceeding) is relative to the interval: a
		// fixed threshold fires on every cycle of a job configured to run less often.
		interval: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "notify_job_interval_seconds", Help: "The configured time between two attempts to run the job, by job name.",
		}, []string{"name"}),
	}
	reg.MustRegister(r.runs, r.lastSuccess, r.interval)
	for _, j := range jobs {
		r.interval.WithLabelValues(j.Name).Set(j.Interval.Seconds())
		for _, result := range []string{"ok", "failed", "locked"} {
			r.runs.WithLabelValues(j.Name, result)
		}
	}
	return r
}

// Run runs every job at start and then every job's interval, until ctx ends. A job that
// fails is logged and tried again at its next interval.
func (r *Runner) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	for _, j := range r.jobs {
		g.Go(func() error {
			t := time.NewTicker(j.Interval)
			defer t.Stop()
			for {
				if _, err := r.RunOnce(ctx, j); err != nil && ctx.Err() == nil {
					r.log.Warn("job failed; trying again at its next interval", "job", j.Name, "err", err)
				}
				select {
				case <-ctx.Done():
					return nil
				case <-t.C:
				}
			}
		})
	}
	return g.Wait()
}

// RunOnce runs j if no other replica is running it, and reports whether it ran.
func (r *Runner) RunOnce(ctx context.Context, j Job) (ran bool, err error) {
	conn, err := pgx.ConnectConfig(ctx, r.pool.Config().ConnConfig.Copy())
	if err != nil {
		r.runs.WithLabelValues(j.Name, "failed").Inc()
		return false, fmt.Errorf("job %s: connect: %w", j.Name, err)
	}
	// Closing the connection releases the lock whatever happened, even if the explicit
	// unlock below could not be sent.
	defer conn.Close(context.WithoutCancel(ctx))
	var locked bool
	if err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", j.LockKey).Scan(&locked); err != nil {
		r.runs.WithLabelValues(j.Name, "failed").Inc()
		return false, fmt.Errorf("job %s: take lock: %w", j.Name, err)
	}
	if !locked {
		r.runs.WithLabelValues(j.Name, "locked").Inc()
		r.log.Debug("job is running in another replica", "job", j.Name)
		return false, nil
	}
	start := time.Now()
	err = j.Run(ctx, conn)
	_, unlockErr := conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", j.LockKey)
	if err != nil {
		r.runs.WithLabelValues(j.Name, "failed").Inc()
		return true, fmt.Errorf("job %s: %w", j.Name, errors.Join(err, unlockErr))
	}
	r.runs.WithLabelValues(j.Name, "ok").Inc()
	r.lastSuccess.WithLabelValues(j.Name).SetToCurrentTime()
	r.log.Debug("job ran", "job", j.Name, "duration", time.Since(start))
	return true, nil
}
