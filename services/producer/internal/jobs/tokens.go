package jobs

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"notify/pkg/schema"
)

// sweepSQL deactivates one batch of stale devices. The outer WHERE repeats the staleness
// test so that a device re-registered (or seen) while the batch was chosen stays active:
// the UPDATE re-evaluates it on the row's newest version.
const sweepSQL = `
WITH stale AS (
	SELECT app, device_id FROM devices
	WHERE active AND greatest(registered_at, last_seen_at) < now() - make_interval(secs => $1)
	ORDER BY greatest(registered_at, last_seen_at)
	LIMIT $2
	FOR UPDATE SKIP LOCKED
)
UPDATE devices d SET active = false, deactivated_at = now(), deactivation_reason = '` + schema.DeactivatedStale + `'
FROM stale
WHERE d.app = stale.app AND d.device_id = stale.device_id AND d.active
  AND greatest(d.registered_at, d.last_seen_at) < now() - make_interval(secs => $1)`

// StaleTokens returns the job that deactivates tokens neither registered nor seen (by
// CheckDevice) for staleAfter, with reason 'stale', batch devices per statement so no
// statement holds many row locks for long. FCM considers such tokens dead, and sending
// to them costs quota.
func StaleTokens(staleAfter time.Duration, batch int, interval time.Duration, log *slog.Logger, reg prometheus.Registerer) Job {
	deactivated := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "notify_tokens_stale_deactivated_total", Help: "Devices deactivated by the stale-token sweep.",
	})
	reg.MustRegister(deactivated)
	return Job{
		Name:     "stale_tokens",
		LockKey:  StaleTokensLockKey,
		Interval: interval,
		Run: func(ctx context.Context, conn *pgx.Conn) error {
			n, err := SweepStaleTokens(ctx, conn, staleAfter, batch)
			deactivated.Add(float64(n))
			if n > 0 {
				log.Info("deactivated stale tokens", "count", n, "stale_after", staleAfter)
			}
			return err
		},
	}
}

// SweepStaleTokens deactivates every device stale for staleAfter, batch by batch, and
// returns how many it deactivated.
func SweepStaleTokens(ctx context.Context, conn *pgx.Conn, staleAfter time.Duration, batch int) (int64, error) {
	var total int64
	for {
		tag, err := conn.Exec(ctx, sweepSQL, staleAfter.Seconds(), batch)
		if err != nil {
			return total, fmt.Errorf("deactivate stale tokens: %w", err)
		}
		total += tag.RowsAffected()
		if tag.RowsAffected() < int64(batch) {
			return total, nil
		}
	}
}
