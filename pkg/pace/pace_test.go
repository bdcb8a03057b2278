package pace

import (
	"context"
	"errors"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"notify/pkg/pgtest"
)

func TestGrantAndRate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		quota     int
		wantGrant int
		wantRate  float64
	}{
		{600_000, 500, 600_000*0.97 - 1000}, // a grant is one multicast at most
		{3000, 12, 3000*0.97 - 24},          // a quarter second of the rate
		{60, 1, 60*0.97 - 2},
		{1, 1, 0.1}, // never below a tenth of the quota
	}
	for _, tc := range tests {
		if g := Grant(tc.quota); g != tc.wantGrant {
			t.Errorf("Grant(%d) = %d, want %d", tc.quota, g, tc.wantGrant)
		}
		if r := Rate(tc.quota); math.Abs(r-tc.wantRate) > 1e-9 {
			t.Errorf("Rate(%d) = %v, want %v", tc.quota, r, tc.wantRate)
		}
	}
}

// waits records what a Budget would have slept instead of sleeping.
type waits struct {
	mu sync.Mutex
	d  []time.Duration
}

func (w *waits) sleep(_ context.Context, d time.Duration) error {
	w.mu.Lock()
	w.d = append(w.d, d)
	w.mu.Unlock()
	return nil
}

func (w *waits) last() time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.d) == 0 {
		return 0
	}
	return w.d[len(w.d)-1]
}

func newBudget(t *testing.T, db *pgtest.DB, apps ...App) (*Budget, *waits) {
	t.Helper()
	b := New(db.Pool, apps, prometheus.NewRegistry())
	w := &waits{}
	b.sleep = w.sleep
	return b, w
}

// nextAt is where app's schedule stands: when its next reservation would be due.
func nextAt(t *testing.T, db *pgtest.DB, app string) time.Time {
	t.Helper()
	var at time.Time
	if err := db.Pool.QueryRow(t.Context(), `SELECT next_at FROM fcm_budgets WHERE app = $1`, app).Scan(&at); err != nil {
		t.Fatal(err)
	}
	return at
}

// near reports whether got is within tol of want.
func near(got, want, tol time.Duration) bool { return got >= want-tol && got <= want+tol }

func TestTakeSharesOneScheduleAcrossProcesses(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	apps := []App{{Name: "a", RatePerMinute: 6000}, {Name: "b", RatePerMinute: 6000}}
	// Two budgets over one database: two replicas.
	b1, w1 := newBudget(t, db, apps...)
	b2, w2 := newBudget(t, db, apps...)
	grant := b1.Grant("a")
	if grant != 25 {
		t.Fatalf("Grant(a) = %d, want 25", grant)
	}
	perSend := time.Duration(float64(time.Minute) / Rate(6000))

	// Nothing sleeps, so each reservation of app a is due one grant after the previous one,
	// whichever replica made it: 20 grants end about 20 grants of schedule from now (less
	// the one grant a fresh schedule may start in the past).
	const grants = 20
	for i := range grants {
		b := b1
		if i%2 == 1 {
			b = b2
		}
		if err := b.Take(t.Context(), "a", grant); err != nil {
			t.Fatalf("Take %d: %v", i, err)
		}
	}
	want := time.Duration(grants-1) * time.Duration(grant) * perSend
	// Generous: the test's own queries take time on a loaded machine.
	if got := max(w1.last(), w2.last()); !near(got, want, 2*time.Second) {
		t.Errorf("last of %d grants due in %s, want about %s", grants, got, want)
	}
	// Another app has its own schedule.
	if err := b1.Take(t.Context(), "b", grant); err != nil {
		t.Fatal(err)
	}
	if got := w1.last(); got > time.Second {
		t.Errorf("first grant of app b due in %s, want at once", got)
	}
	if err := b1.Take(t.Context(), "c", 1); !errors.Is(err, ErrUnknownApp) {
		t.Errorf("Take of an unknown app: %v, want ErrUnknownApp", err)
	}
}

func TestThrottlePausesTheAppAndHalvesItsRate(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	b1, w1 := newBudget(t, db, App{Name: "a", RatePerMinute: 6000})
	b2, w2 := newBudget(t, db, App{Name: "a", RatePerMinute: 6000})
	if err := b1.Take(t.Context(), "a", 1); err != nil {
		t.Fatal(err)
	}
	// A 429 seen by one replica holds the other one's sends until the Retry-After.
	if err := b1.Throttle(t.Context(), "a", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := b2.Take(t.Context(), "a", 1); err != nil {
		t.Fatal(err)
	}
	if got := w2.last(); !near(got, 30*time.Second, 2*time.Second) {
		t.Errorf("after a 429 with Retry-After 30s the other replica's send is due in %s, want about 30s", got)
	}
	var factor float64
	if err := db.Pool.QueryRow(t.Context(), `SELECT factor FROM fcm_budgets WHERE app = 'a'`).Scan(&factor); err != nil {
		t.Fatal(err)
	}
	if math.Abs(factor-0.5) > 0.02 {
		t.Errorf("factor after one 429: %v, want about 0.5", factor)
	}
	// The 429s of sends already in flight back off once: the factor stays.
	if err := b2.Throttle(t.Context(), "a", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := db.Pool.QueryRow(t.Context(), `SELECT factor FROM fcm_budgets WHERE app = 'a'`).Scan(&factor); err != nil {
		t.Fatal(err)
	}
	if math.Abs(factor-0.5) > 0.02 {
		t.Errorf("factor after a second 429 within the Retry-After: %v, want still about 0.5", factor)
	}
	// At half the rate a grant takes twice as long.
	before := w1.last()
	if err := b1.Take(t.Context(), "a", b1.Grant("a")); err != nil {
		t.Fatal(err)
	}
	perGrant := time.Duration(float64(b1.Grant("a")) * float64(time.Minute) / Rate(6000))
	if got := w1.last() - max(before, w2.last()); !near(got, 2*perGrant, perGrant/2+time.Second) {
		t.Errorf("a grant at half rate moved the schedule by %s, want about %s", got, 2*perGrant)
	}

	// Recovery is additive with time: pretend the 429 was 20 s ago.
	if _, err := db.Pool.Exec(t.Context(), `UPDATE fcm_budgets SET factor_at = now() - interval '20 seconds' WHERE app = 'a'`); err != nil {
		t.Fatal(err)
	}
	if err := b1.Take(t.Context(), "a", 1); err != nil {
		t.Fatal(err)
	}
	if err := db.Pool.QueryRow(t.Context(), `SELECT factor FROM fcm_budgets WHERE app = 'a'`).Scan(&factor); err != nil {
		t.Fatal(err)
	}
	if want := 0.5 + 20*Recovery; math.Abs(factor-want) > 0.03 {
		t.Errorf("factor 20 s after the 429: %v, want about %v", factor, want)
	}
}

func TestTakeSleepsUntilDue(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	b := New(db.Pool, []App{{Name: "a", RatePerMinute: 60}}, prometheus.NewRegistry())
	// 60 a minute: a send a second and change. A cancelled ctx ends the wait.
	if err := b.Take(t.Context(), "a", 1); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := b.Take(ctx, "a", 5); !errors.Is(err, context.Canceled) {
		t.Errorf("Take with a cancelled ctx: %v, want context.Canceled", err)
	}
}

// TestSmallTakesShareOneGrant: TakeLeased of fewer sends than a grant is served from the rest of
// the grant the first one reserved (the schedule does not move) until it is used up, until
// grantTime after it was due, or until a 429 holds the app back; each then reserves anew.
func TestSmallTakesShareOneGrant(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	b, w := newBudget(t, db, App{Name: "a", RatePerMinute: 6000})
	if g := b.Grant("a"); g != 25 {
		t.Fatalf("Grant(a) = %d, want 25", g)
	}
	nextAt := func() time.Time { return nextAt(t, db, "a") }
	take := func(n int) {
		t.Helper()
		if err := b.TakeLeased(t.Context(), "a", n); err != nil {
			t.Fatal(err)
		}
	}
	take(2)
	first := nextAt()
	for range 11 { // 22 more sends: 24 of the grant's 25
		take(2)
	}
	if got := nextAt(); !got.Equal(first) {
		t.Fatalf("12 Takes of 2 moved the schedule from %v to %v: want them all from one grant", first, got)
	}
	perGrant := time.Duration(25 * float64(time.Minute) / Rate(6000))
	take(2) // one send left: a new grant
	second := nextAt()
	if d := second.Sub(first); !near(d, perGrant, perGrant/5) {
		t.Errorf("a Take beyond the lease moved the schedule by %s, want one grant (%s)", d, perGrant)
	}

	// A lease past its time is not used.
	now := time.Now()
	b.now = func() time.Time { return now.Add(time.Minute) }
	take(1)
	if got := nextAt(); got.Equal(second) {
		t.Error("a Take a minute after the lease was due was served from it")
	}
	b.now = time.Now

	// After a 429 nothing comes from the lease: the next send waits for the Retry-After.
	take(1)
	if err := b.Throttle(t.Context(), "a", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	take(1)
	if got := w.last(); !near(got, 30*time.Second, 2*time.Second) {
		t.Errorf("a Take after a 429 with Retry-After 30s is due in %s, want about 30s", got)
	}
}

// TestTakeReservesExactly: Take of fewer sends than a grant (a broadcast's last piece of a
// chunk) moves the schedule by those sends only and keeps no lease, so nothing of the app's
// quota is left to expire; it is served from a live lease that holds enough.
func TestTakeReservesExactly(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	b, _ := newBudget(t, db, App{Name: "a", RatePerMinute: 6000})
	nextAt := func() time.Time { return nextAt(t, db, "a") }
	perSend := time.Duration(float64(time.Minute) / Rate(6000))
	if err := b.Take(t.Context(), "a", 5); err != nil {
		t.Fatal(err)
	}
	first := nextAt()
	if err := b.Take(t.Context(), "a", 5); err != nil {
		t.Fatal(err)
	}
	second := nextAt()
	if d := second.Sub(first); !near(d, 5*perSend, perSend) {
		t.Errorf("a second Take of 5 moved the schedule by %s, want 5 sends' worth (%s): the first must keep no lease", d, 5*perSend)
	}
	if err := b.TakeLeased(t.Context(), "a", 2); err != nil { // a whole grant: 23 left in the lease
		t.Fatal(err)
	}
	third := nextAt()
	if d := third.Sub(second); !near(d, 25*perSend, perSend) {
		t.Errorf("TakeLeased of 2 moved the schedule by %s, want a grant (%s)", d, 25*perSend)
	}
	if err := b.Take(t.Context(), "a", 5); err != nil {
		t.Fatal(err)
	}
	if got := nextAt(); !got.Equal(third) {
		t.Errorf("a Take of 5 with 23 in a live lease moved the schedule from %v to %v", third, got)
	}
}
