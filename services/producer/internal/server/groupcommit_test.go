package server

import (
	"context"
	"errors"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"notify/pkg/pgtest"
	notifyv1 "notify/proto/gen/notify/v1"
)

// waitFor polls cond until it holds, failing the test after a generous timeout (the
// machine may be loaded).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// fakeStore records the batches a committer writes; a batch whose first row's caller is
// "gate" waits until release is closed.
type fakeStore struct {
	release chan struct{}

	mu      sync.Mutex
	batches [][]string // callers per batch, in start order
}

func newFakeStore() *fakeStore { return &fakeStore{release: make(chan struct{})} }

func (f *fakeStore) store(_ context.Context, rows []row) []stored {
	callers := make([]string, len(rows))
	for i, r := range rows {
		callers[i] = r.caller
	}
	f.mu.Lock()
	f.batches = append(f.batches, callers)
	f.mu.Unlock()
	if callers[0] == "gate" {
		<-f.release
	}
	out := make([]stored, len(rows))
	for i, r := range rows {
		out[i] = stored{id: r.id, inserted: true}
	}
	return out
}

func (f *fakeStore) sizes() []int {
	f.mu.Lock()
	defer f.mu.Unlock()
	var n []int
	for _, b := range f.batches {
		n = append(n, len(b))
	}
	return n
}

func (c *committer) queued() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.queue)
}

func (c *committer) busy() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.running > 0
}

// submitAsync submits a row for caller and returns the channel its outcome arrives on.
func submitAsync(ctx context.Context, c *committer, caller string) <-chan error {
	errc := make(chan error, 1)
	go func() {
		s, err := c.submit(ctx, row{id: uuid.New(), caller: caller})
		if err == nil && !s.inserted {
			err = errors.New("not inserted")
		}
		errc <- err
	}()
	return errc
}

func TestCommitterLoneCallDoesNotLinger(t *testing.T) {
	t.Parallel()
	f := newFakeStore()
	// A linger of an hour: the test can only finish if a lone call skips it.
	c := newCommitter(GroupCommit{MaxBatch: 10, Linger: time.Hour, MaxCommits: 2}, f.store, func([]row, []stored) {})
	for range 3 {
		if err := <-submitAsync(context.Background(), c, "solo"); err != nil {
			t.Fatal(err)
		}
	}
	if diff := cmp.Diff([]int{1, 1, 1}, f.sizes()); diff != "" {
		t.Errorf("batch sizes (-want +got):\n%s", diff)
	}
}

func TestCommitterBatchBoundaries(t *testing.T) {
	t.Parallel()
	f := newFakeStore()
	var doneBatches [][]row
	var mu sync.Mutex
	c := newCommitter(GroupCommit{MaxBatch: 4, Linger: time.Hour, MaxCommits: 1}, f.store, func(rows []row, _ []stored) {
		mu.Lock()
		doneBatches = append(doneBatches, rows)
		mu.Unlock()
	})
	ctx := context.Background()
	first := submitAsync(ctx, c, "gate")
	waitFor(t, "the first batch to start", func() bool { return len(f.sizes()) == 1 })

	// Nine calls arrive while the only commit slot is busy: they queue, then go in batches
	// of at most four, in arrival order.
	var waiting []<-chan error
	for i := range 9 {
		waiting = append(waiting, submitAsync(ctx, c, "c"+strconv.Itoa(i)))
		waitFor(t, "the call to queue", func() bool { return c.queued() == i+1 })
	}
	close(f.release)
	for _, errc := range append(waiting, first) {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	if diff := cmp.Diff([]int{1, 4, 4, 1}, f.sizes()); diff != "" {
		t.Errorf("batch sizes (-want +got):\n%s", diff)
	}
	f.mu.Lock()
	got := slices.Concat(f.batches[1:]...)
	f.mu.Unlock()
	want := []string{"c0", "c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("callers in batch order (-want +got):\n%s", diff)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(doneBatches) != 4 {
		t.Errorf("done hook ran %d times, want once per batch (4)", len(doneBatches))
	}
}

func TestCommitterFullBatchSkipsLinger(t *testing.T) {
	t.Parallel()
	f := newFakeStore()
	c := newCommitter(GroupCommit{MaxBatch: 3, Linger: time.Hour, MaxCommits: 2}, f.store, func([]row, []stored) {})
	ctx := context.Background()
	first := submitAsync(ctx, c, "gate")
	waitFor(t, "the first batch to start", func() bool { return len(f.sizes()) == 1 })

	// A commit runs, so the next calls linger (an hour) — until three fill a batch.
	var waiting []<-chan error
	for i := range 3 {
		waiting = append(waiting, submitAsync(ctx, c, "c"+strconv.Itoa(i)))
	}
	for _, errc := range waiting {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	close(f.release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]int{1, 3}, f.sizes()); diff != "" {
		t.Errorf("batch sizes (-want +got):\n%s", diff)
	}
}

func TestCommitterSkipsCallersThatGaveUp(t *testing.T) {
	t.Parallel()
	f := newFakeStore()
	c := newCommitter(GroupCommit{MaxBatch: 10, MaxCommits: 1}, f.store, func([]row, []stored) {})
	ctx := context.Background()
	first := submitAsync(ctx, c, "gate")
	waitFor(t, "the first batch to start", func() bool { return len(f.sizes()) == 1 })

	gone, cancel := context.WithCancel(ctx)
	quitter := submitAsync(gone, c, "quitter")
	stayer := submitAsync(ctx, c, "stayer")
	waitFor(t, "two calls to queue", func() bool { return c.queued() == 2 })
	cancel()
	if err := <-quitter; !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled caller got %v, want context.Canceled", err)
	}
	close(f.release)
	for _, errc := range []<-chan error{first, stayer} {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if diff := cmp.Diff([][]string{{"gate"}, {"stayer"}}, f.batches); diff != "" {
		t.Errorf("batches (-want +got):\n%s", diff)
	}
}

func testRow(t *testing.T, caller, key string) row {
	t.Helper()
	req := validRequest()
	req.IdempotencyKey = key
	r, err := newRow(caller, req)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func countRows(t *testing.T, pool *pgxpool.Pool) (notifications, outbox int) {
	t.Helper()
	err := pool.QueryRow(context.Background(), "SELECT (SELECT count(*) FROM notifications), (SELECT count(*) FROM outbox WHERE message_type <> 'notify.bus.v1.StatusEvent')").
		Scan(&notifications, &outbox)
	if err != nil {
		t.Fatal(err)
	}
	return notifications, outbox
}

func TestStoreRows(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()

	earlier := testRow(t, "svc", "k-old")
	if got := storeRows(ctx, db.Pool, []row{earlier}); got[0].err != nil || !got[0].inserted {
		t.Fatalf("storing the first row: %+v", got[0])
	}

	bad := testRow(t, "svc", "k-bad")
	bad.request = []byte(`{"not json`) // PostgreSQL refuses it: the statement fails for this row alone
	rows := []row{
		testRow(t, "svc", "k1"),    // 0 new
		testRow(t, "svc", "k-old"), // 1 duplicate of an earlier call
		testRow(t, "svc", "k1"),    // 2 duplicate of row 0, same batch
		bad,                        // 3 refused
		testRow(t, "svc", ""),      // 4 new, no key
		testRow(t, "other", "k1"),  // 5 new: keys are per caller
		testRow(t, "svc", "k-bad"), // 6 duplicate of the refused row: refused with it
	}
	got := storeRows(ctx, db.Pool, rows)

	type outcome struct {
		ID                  uuid.UUID
		Duplicate, Inserted bool
		Failed              bool
	}
	var gotOutcomes []outcome
	for _, s := range got {
		gotOutcomes = append(gotOutcomes, outcome{s.id, s.duplicate, s.inserted, s.err != nil})
	}
	want := []outcome{
		{ID: rows[0].id, Inserted: true},
		{ID: earlier.id, Duplicate: true},
		{ID: rows[0].id, Duplicate: true},
		{Failed: true},
		{ID: rows[4].id, Inserted: true},
		{ID: rows[5].id, Inserted: true},
		{Failed: true},
	}
	if diff := cmp.Diff(want, gotOutcomes); diff != "" {
		t.Errorf("outcomes (-want +got):\n%s", diff)
	}
	if !rowError(got[3].err) {
		t.Errorf("refused row's error = %v, want PostgreSQL's data error", got[3].err)
	}
	if n, o := countRows(t, db.Pool); n != 4 || o != 4 {
		t.Errorf("rows: %d notifications, %d outbox; want 4 and 4 (one pair per written notification)", n, o)
	}
}

// hookedDB passes queries to pool; before an insert it calls before with the batch's
// callers, which may block and may hand back another querier to run it on.
type hookedDB struct {
	pool   *pgxpool.Pool
	before func(ctx context.Context, callers []string) querier
}

func (h hookedDB) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if sql == insertSQL {
		if q := h.before(ctx, args[1].([]string)); q != nil {
			return q.Query(ctx, sql, args...)
		}
	}
	return h.pool.Query(ctx, sql, args...)
}

// brokenConn returns a connection whose server process was terminated: what a database
// restart or a network failure leaves a pool holding.
func brokenConn(t *testing.T, ctx context.Context, pool *pgxpool.Pool) querier {
	c, err := pool.Acquire(ctx)
	if err != nil {
		t.Error(err)
		return nil
	}
	t.Cleanup(c.Release)
	if _, err := pool.Exec(ctx, "SELECT pg_terminate_backend($1)", c.Conn().PgConn().PID()); err != nil {
		t.Error(err)
	}
	return c
}

func TestPublishDatabaseErrorFailsOnlyItsBatch(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	s := NewNotifications(db.Pool, discard, prometheus.NewRegistry(), nil, GroupCommit{MaxBatch: 3, MaxCommits: 1})
	release := make(chan struct{})
	s.db = hookedDB{pool: db.Pool, before: func(ctx context.Context, callers []string) querier {
		switch callers[0] {
		case "gate":
			<-release
		case "doomed":
			return brokenConn(t, ctx, db.Pool)
		}
		return nil
	}}
	publish := func(caller, key string) <-chan error {
		errc := make(chan error, 1)
		go func() {
			req := validRequest()
			req.IdempotencyKey = key
			_, err := s.Publish(WithCaller(ctx, caller), req)
			errc <- err
		}()
		return errc
	}

	first := publish("gate", "")
	waitFor(t, "the first batch to start", func() bool { return s.commit.queued() == 0 && s.commit.busy() })
	var doomed, fine []<-chan error
	for i := range 3 {
		doomed = append(doomed, publish("doomed", "d"+strconv.Itoa(i)))
		waitFor(t, "the call to queue", func() bool { return s.commit.queued() == i+1 })
	}
	for i := range 3 {
		fine = append(fine, publish("fine", "f"+strconv.Itoa(i)))
		waitFor(t, "the call to queue", func() bool { return s.commit.queued() == 4+i })
	}
	close(release)

	for _, errc := range doomed {
		if err := <-errc; status.Code(err) != codes.Unavailable {
			t.Errorf("call in the failed batch: %v, want UNAVAILABLE", err)
		}
	}
	for _, errc := range append(fine, first) {
		if err := <-errc; err != nil {
			t.Errorf("call in a healthy batch: %v", err)
		}
	}
	var callers []string
	rows, err := db.Pool.Query(ctx, "SELECT caller FROM notifications JOIN outbox ON outbox.notification_id = notifications.id AND outbox.message_type <> 'notify.bus.v1.StatusEvent' ORDER BY caller")
	if err != nil {
		t.Fatal(err)
	}
	callers, err = pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"fine", "fine", "fine", "gate"}, callers); diff != "" {
		t.Errorf("written notifications with their outbox rows, by caller (-want +got):\n%s", diff)
	}
}

// A caller that gives up while its batch is being written (its answer is lost, as when
// the connection or the producer dies between commit and answer) retries with its key and
// gets the id that was committed, once.
func TestPublishRetryAfterLostAnswerGetsSameID(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	s := NewNotifications(db.Pool, discard, prometheus.NewRegistry(), nil, GroupCommit{})
	giveUp, cancel := context.WithCancel(ctx)
	committing := make(chan struct{})
	var once sync.Once
	s.db = hookedDB{pool: db.Pool, before: func(context.Context, []string) querier {
		once.Do(func() {
			cancel() // the caller leaves just before its row is written
			close(committing)
		})
		return nil
	}}
	req := validRequest()
	req.IdempotencyKey = "order-7-paid"
	if _, err := s.Publish(giveUp, req); status.Code(err) != codes.Canceled {
		t.Fatalf("first attempt: %v, want CANCELED", err)
	}
	<-committing
	var committed uuid.UUID
	waitFor(t, "the abandoned row to commit", func() bool {
		return db.Pool.QueryRow(ctx, "SELECT id FROM notifications WHERE idempotency_key = $1", req.IdempotencyKey).Scan(&committed) == nil
	})

	// A new producer (the old one crashed) answers the retry.
	restarted := NewNotifications(db.Pool, discard, prometheus.NewRegistry(), nil, GroupCommit{})
	for _, p := range []*Notifications{restarted, s} {
		resp, err := p.Publish(ctx, req)
		if err != nil {
			t.Fatalf("retry: %v", err)
		}
		if resp.GetNotificationId() != committed.String() || !resp.GetDuplicate() {
			t.Errorf("retry = %v, want id %s with duplicate=true", resp, committed)
		}
	}
	if n, o := countRows(t, db.Pool); n != 1 || o != 1 {
		t.Errorf("rows: %d notifications, %d outbox; want 1 and 1", n, o)
	}
}

// Concurrent calls with the same key, however they are batched, answer one id: one
// accepted, the rest duplicates.
func TestPublishConcurrentSameKey(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	wakes, batches := 0, 0
	var mu sync.Mutex
	s := NewNotifications(db.Pool, discard, prometheus.NewRegistry(), func() { mu.Lock(); wakes++; mu.Unlock() }, GroupCommit{MaxBatch: 8})
	done := s.commit.done
	s.commit.done = func(rows []row, results []stored) {
		mu.Lock()
		batches++
		mu.Unlock()
		done(rows, results)
	}
	const calls = 40
	resps := make([]*notifyv1.PublishResponse, calls)
	var wg sync.WaitGroup
	for i := range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req := validRequest()
			req.IdempotencyKey = "same"
			if i%2 == 1 {
				req.IdempotencyKey = "k" + strconv.Itoa(i)
			}
			var err error
			if resps[i], err = s.Publish(ctx, req); err != nil {
				t.Errorf("Publish %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	ids := map[string]bool{}
	fresh := 0
	for i, r := range resps {
		if i%2 == 0 {
			ids[r.GetNotificationId()] = true
			if !r.GetDuplicate() {
				fresh++
			}
		}
	}
	if len(ids) != 1 || fresh != 1 {
		t.Errorf("calls with one key got %d ids, %d not duplicate; want 1 and 1", len(ids), fresh)
	}
	if n, o := countRows(t, db.Pool); n != 1+calls/2 || o != n {
		t.Errorf("rows: %d notifications, %d outbox; want %d each", n, o, 1+calls/2)
	}
	mu.Lock()
	defer mu.Unlock()
	if wakes == 0 || wakes > batches {
		t.Errorf("relay woken %d times for %d batches; want at least once, at most once per batch", wakes, batches)
	}
}

// BenchmarkPublishConcurrent: 32 concurrent callers publishing against real PostgreSQL,
// with group commit as configured by default and with one row per transaction (what
// Publish did before), for comparison. Besides calls/s it reports the CPU milliseconds per
// call of this process (cpu-ms/op: Publish without gRPC) and of PostgreSQL's backends
// serving the test database (pg-cpu-ms/op):
//
//	cd services/producer && go test -run x -bench PublishConcurrent ./internal/server/
func BenchmarkPublishConcurrent(b *testing.B) {
	for _, bc := range []struct {
		name string
		gc   GroupCommit
	}{
		{"group_commit", GroupCommit{}},
		{"row_per_transaction", GroupCommit{MaxBatch: 1, MaxCommits: 32}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			db := pgtest.New(b)
			s := NewNotifications(db.Pool, discard, prometheus.NewRegistry(), nil, bc.gc)
			ctx := context.Background()
			var seq atomic.Int64
			b.SetParallelism(32 / max(1, runtime.GOMAXPROCS(0)))
			b.ResetTimer()
			pgCPU, pgErr := pgtest.StartBackendCPU(ctx, db.Pool)
			cpu0 := processCPU()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					req := validRequest()
					req.IdempotencyKey = "k" + strconv.FormatInt(seq.Add(1), 10)
					if _, err := s.Publish(ctx, req); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			cpu := processCPU() - cpu0
			var pgUsed time.Duration
			if pgErr == nil {
				pgUsed, pgErr = pgCPU.Used(ctx)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "calls/s")
			b.ReportMetric(float64(cpu.Microseconds())/1000/float64(b.N), "cpu-ms/op")
			if pgErr == nil {
				b.ReportMetric(float64(pgUsed.Microseconds())/1000/float64(b.N), "pg-cpu-ms/op")
			} else {
				b.Logf("PostgreSQL's CPU not measured: %v", pgErr)
			}
		})
	}
}

// processCPU is the user and system time this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
