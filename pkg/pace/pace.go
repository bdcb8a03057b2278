// Package pace keeps every sender and retrier replica together under each Firebase app's
// quota. The budget lives in PostgreSQL, one row per app (fcm_budgets), as a GCRA schedule:
// a process reserves a grant of sends with one UPDATE, which moves the app's next_at on by
// the grant's share of the rate and answers when the grant is due; the process sleeps until
// then and sends. Grants are a quarter second of the app's rate (at most fcm.MaxMulticast),
// so all replicas together make about four round trips a second per busy app, whatever
// the rate, and never one per token. A process that needs fewer sends than a grant (the
// sender's small notifications, a few tokens a batch) still reserves a whole grant and
// keeps the rest as a lease, from which its next small Takes are served without a round
// trip until the lease runs out or grantTime after it was due, when what is left goes
// unused (see TakeLeased). A broadcast's pieces reserve exactly what they send (Take).
//
// Why sends stay under the quota: reservations are disjoint slices of the schedule, each as
// long as its sends take at the rate in force. In any window of a minute the sends due in it
// cover at most a minute of schedule plus one grant, and a process that comes back late may
// catch up at most one grant of lost time. A lease's sends go at most grantTime after their
// grant was due: a quarter second of schedule more per process, well within Margin. The
// schedule runs at Margin below the configured rate less those two grants, so the
// project's minute never sees more than its quota even when sends reach FCM a second or so
// after they were due.
//
// On a 429 the whole app backs off (Throttle): nothing is granted before the Retry-After
// has passed, and the rate in force is halved (multiplicative decrease, at most once per
// Retry-After, so the 429s of sends already in flight count once). It then recovers by
// Recovery of the configured rate per second (additive increase).
package pace

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
)

// Tuning of the schedule.
const (
	// Margin is the share of the configured rate left unused, for the time between a send
	// being due and reaching FCM.
	Margin = 0.03
	// Recovery is how much of the configured rate comes back each second after a 429.
	Recovery = 0.01
	// MinFactor is the least share of the rate a 429 leaves in force.
	MinFactor = 0.05
	// grantTime is how much of the schedule one grant covers.
	grantTime = 250 * time.Millisecond
	// maxGrant is the largest grant: one multicast.
	maxGrant = 500
)

// ErrUnknownApp is returned for an app the Budget was not configured with.
var ErrUnknownApp = errors.New("unknown app")

// App is an app to pace and its quota.
type App struct {
	Name          string
	RatePerMinute int
}

type appRate struct {
	grant    int     // sends per grant
	interval float64 // seconds per send at factor 1 (the paced rate, below the quota)
	rate     int     // the configured quota, per minute
}

// Budget reserves sends from each app's shared budget. It is safe for concurrent use.
type Budget struct {
	pool  *pgxpool.Pool
	apps  map[string]appRate
	sleep func(ctx context.Context, d time.Duration) error
	now   func() time.Time

	mu     sync.Mutex
	leases map[string]lease // per app: the rest of a grant this process reserved

	granted   *prometheus.CounterVec
	waited    *prometheus.CounterVec
	throttled *prometheus.CounterVec
	rate      *prometheus.GaugeVec
}

// New returns a Budget for apps and registers its metrics with reg.
func New(pool *pgxpool.Pool, apps []App, reg prometheus.Registerer) *Budget {
	b := &Budget{
		pool:   pool,
		apps:   make(map[string]appRate, len(apps)),
		sleep:  sleep,
		now:    time.Now,
		leases: map[string]lease{},
		granted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "notify_fcm_budget_granted_total", Help: "Sends granted from the app's shared FCM budget (its use).",
		}, []string{"app"}),
		waited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "notify_fcm_budget_wait_seconds_total", Help: "Time sends waited for the app's shared FCM budget.",
		}, []string{"app"}),
		throttled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "notify_fcm_throttled_total", Help: "Times FCM answered 429 for the app and its budget backed off.",
		}, []string{"app"}),
		rate: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "notify_fcm_budget_rate_per_minute", Help: "The app's send rate in force (its budget), per minute, as last seen by this process.",
		}, []string{"app"}),
	}
	for _, a := range apps {
		r := Rate(a.RatePerMinute)
		b.apps[a.Name] = appRate{grant: Grant(a.RatePerMinute), interval: 60 / r, rate: a.RatePerMinute}
		b.rate.WithLabelValues(a.Name).Set(r)
		// At 0 from the start, so that rates and alerts see the first event.
		b.granted.WithLabelValues(a.Name)
		b.waited.WithLabelValues(a.Name)
		b.throttled.WithLabelValues(a.Name)
	}
	reg.MustRegister(b.granted, b.waited, b.throttled, b.rate)
	return b
}

// Grant is the number of sends one reservation covers for an app with this quota.
func Grant(ratePerMinute int) int {
	return min(max(int(float64(ratePerMinute)*grantTime.Seconds()/60), 1), maxGrant)
}

// Rate is the rate per minute the schedule runs at for a quota: Margin below it, less the
// two grants a minute may see beyond its schedule; never below a tenth of the quota.
func Rate(ratePerMinute int) float64 {
	q := float64(ratePerMinute)
	return math.Max(q*(1-Margin)-2*float64(Grant(ratePerMinute)), q/10)
}

// Grant returns the most sends one Take of app should ask for (0 for an unknown app).
func (b *Budget) Grant(app string) int { return b.apps[app].grant }

// recovered is the factor with its additive recovery since factor_at.
var recovered = "least(1.0, factor + " + strconv.FormatFloat(Recovery, 'f', -1, 64) +
	" * extract(epoch FROM now() - factor_at)::float8)"

// reserveSQL moves the app's schedule on by $2 sends of $3 seconds each at factor 1, at
// the factor in force after its recovery since factor_at, and returns how long until the
// reservation is due and that factor. A schedule that fell behind resumes at most $4
// seconds in the past: lost time is made up for by at most one grant.
//
// It commits without waiting for its WAL to reach the disk (synchronous_commit off, for its
// own transaction only). The app's row stays locked until the commit, so every caller of
// every replica waited for the previous one's disk flush in turn: BenchmarkTake, 8 callers,
// PostgreSQL 444 CPU us and 2.5 ms per reservation. A PostgreSQL crash may lose the last
// fraction of a second of reservations: the schedule then restarts that much earlier, a
// burst FCM answers with 429 at worst, which Throttle handles as any other.
var reserveSQL = `
UPDATE fcm_budgets SET
    factor    = ` + recovered + `,
    factor_at = now(),
    next_at   = greatest(next_at, now() - make_interval(secs => $4::float8)) + make_interval(secs => $2::float8 * $3::float8 / ` + recovered + `)
WHERE app = $1 AND set_config('synchronous_commit', 'off', true) IS NOT NULL
RETURNING extract(epoch FROM next_at - now())::float8, factor`

// lease is what is left of a grant this process reserved for an app: sends due at due,
// which may be handed out until grantTime after it.
type lease struct {
	due  time.Time
	left int
}

// live reports whether the lease's sends may still be handed out at now.
func (l lease) live(now time.Time) bool { return !now.After(l.due.Add(grantTime)) }

// Take reserves n sends of app (at most Grant(app)) and returns when they are due, having
// slept until then. The sends must be made right away; an error means nothing was reserved
// or ctx ended while waiting (the reserved sends are then lost, which only slows the app).
//
// It reserves exactly n: from the app's lease when that still holds them (no round trip),
// else in one reservation of n. A broadcast's pieces take this way: a piece that is not a
// whole grant (a chunk's last few tokens) reserves no more than it sends.
func (b *Budget) Take(ctx context.Context, app string, n int) error {
	return b.take(ctx, app, n, false)
}

// TakeLeased is Take for a small batch, such as the sender's small notifications: fewer
// sends than a grant come from the app's lease when it still holds them; otherwise a whole
// grant is reserved and what n leaves of it becomes the lease, for the process's next small
// batches. What a lease has left grantTime after it was due goes unused: it suits batches
// that follow each other closely, not a broadcast, whose piece every few hundred
// milliseconds would leave most of each grant to expire (make bench's apps phase, the app
// with the smallest quota: 0.95× → 0.88–0.92× its quota while pieces took leases).
func (b *Budget) TakeLeased(ctx context.Context, app string, n int) error {
	return b.take(ctx, app, n, true)
}

func (b *Budget) take(ctx context.Context, app string, n int, leased bool) error {
	a, ok := b.apps[app]
	if !ok {
		return fmt.Errorf("pace %q: %w", app, ErrUnknownApp)
	}
	if n <= 0 {
		return nil
	}
	due, ok := b.fromLease(app, n)
	if !ok {
		reserve := n
		if leased {
			reserve = max(n, a.grant)
		}
		var wait, factor float64
		err := b.withRow(ctx, app, func() error {
			return b.pool.QueryRow(ctx, reserveSQL, app, reserve, a.interval, float64(a.grant)*a.interval).Scan(&wait, &factor)
		})
		if err != nil {
			return fmt.Errorf("reserve %d sends of app %s: %w", reserve, app, err)
		}
		b.rate.WithLabelValues(app).Set(factor * 60 / a.interval)
		due = b.now().Add(time.Duration(wait * float64(time.Second)))
		b.keepLease(app, lease{due: due, left: reserve - n})
	}
	b.granted.WithLabelValues(app).Add(float64(n))
	d := due.Sub(b.now())
	if d <= 0 {
		return nil
	}
	b.waited.WithLabelValues(app).Add(d.Seconds())
	return b.sleep(ctx, d)
}

// fromLease takes n sends from app's lease, if it holds that many and is not past its
// time, and returns when they are due.
func (b *Budget) fromLease(app string, n int) (time.Time, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	l, ok := b.leases[app]
	if !ok || l.left < n || !l.live(b.now()) {
		return time.Time{}, false
	}
	l.left -= n
	b.leases[app] = l
	return l.due, true
}

// keepLease makes l app's lease unless l is empty or the live lease it has holds more.
func (b *Budget) keepLease(app string, l lease) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if old, ok := b.leases[app]; l.left == 0 || ok && old.left >= l.left && old.live(b.now()) {
		return
	}
	b.leases[app] = l
}

// throttleSQL pauses app until $2 seconds from now and, unless it already did so within
// that time, halves its factor (not below $3).
var throttleSQL = `
UPDATE fcm_budgets SET
    factor       = CASE WHEN throttled_at IS NULL OR throttled_at < now() - make_interval(secs => $2::float8)
                        THEN greatest($3::float8, ` + recovered + ` / 2) ELSE ` + recovered + ` END,
    factor_at    = now(),
    throttled_at = CASE WHEN throttled_at IS NULL OR throttled_at < now() - make_interval(secs => $2::float8)
                        THEN now() ELSE throttled_at END,
    next_at      = greatest(next_at, now() + make_interval(secs => $2::float8))
WHERE app = $1
RETURNING factor`

// Throttle records that FCM answered 429 for app with retryAfter (0 if it sent none, then
// taken as one second): every process holds the app's sends until then, and the rate in
// force backs off.
func (b *Budget) Throttle(ctx context.Context, app string, retryAfter time.Duration) error {
	a, ok := b.apps[app]
	if !ok {
		return fmt.Errorf("pace %q: %w", app, ErrUnknownApp)
	}
	retryAfter = max(retryAfter, time.Second)
	// Nothing more goes from this process's lease: the app is held back from now on.
	b.mu.Lock()
	delete(b.leases, app)
	b.mu.Unlock()
	var factor float64
	err := b.withRow(ctx, app, func() error {
		return b.pool.QueryRow(ctx, throttleSQL, app, retryAfter.Seconds(), MinFactor).Scan(&factor)
	})
	if err != nil {
		return fmt.Errorf("throttle app %s: %w", app, err)
	}
	b.throttled.WithLabelValues(app).Inc()
	b.rate.WithLabelValues(app).Set(factor * 60 / a.interval)
	return nil
}

// withRow runs update, creating the app's row first if update found none.
func (b *Budget) withRow(ctx context.Context, app string, update func() error) error {
	err := update()
	if !errors.Is(err, pgx.ErrNoRows) {
		return err
	}
	if _, err := b.pool.Exec(ctx, `INSERT INTO fcm_budgets (app) VALUES ($1) ON CONFLICT DO NOTHING`, app); err != nil {
		return err
	}
	return update()
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
