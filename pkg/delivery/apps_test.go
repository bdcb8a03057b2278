package delivery

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"notify/pkg/fcm"
	"notify/pkg/pgtest"
	"notify/pkg/rabbit"
)

// appFCM records which tokens were sent through it.
type appFCM struct {
	mu    sync.Mutex
	calls [][]string
}

func (a *appFCM) SendMulticast(ctx context.Context, m fcm.Message, tokens []string) ([]fcm.Result, error) {
	a.mu.Lock()
	a.calls = append(a.calls, slices.Clone(tokens))
	a.mu.Unlock()
	return scriptedFCM{}.SendMulticast(ctx, m, tokens)
}

// fakePacer grants pieces of grant sends, records them and the 429s it is told of.
type fakePacer struct {
	grant     int
	mu        sync.Mutex
	takes     []string // "app:n", "app:n leased"
	throttled []string // "app:retryAfter"
	failAfter int      // Take fails after this many takes (0: never)
}

func (p *fakePacer) Grant(string) int { return p.grant }

func (p *fakePacer) Take(_ context.Context, app string, n int) error { return p.take(app, n, "") }

func (p *fakePacer) TakeLeased(_ context.Context, app string, n int) error {
	return p.take(app, n, " leased")
}

func (p *fakePacer) take(app string, n int, kind string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.failAfter > 0 && len(p.takes) >= p.failAfter {
		return context.DeadlineExceeded
	}
	p.takes = append(p.takes, fmt.Sprintf("%s:%d", app, n)+kind)
	return nil
}

func (p *fakePacer) Throttle(_ context.Context, app string, retryAfter time.Duration) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.throttled = append(p.throttled, fmt.Sprintf("%s:%s", app, retryAfter))
	return nil
}

func newAppsDeliverer(t *testing.T, apps map[string]*appFCM, pacer *fakePacer) (*pgtest.DB, *Store, *Deliverer) {
	t.Helper()
	db := pgtest.New(t)
	store := NewStore(db.Pool)
	topo := rabbit.NewTopology("test", []time.Duration{10 * time.Second, 20 * time.Second, 40 * time.Second})
	opts := Options{MaxAttempts: 3, MaxConcurrentSends: 2, Apps: func(app string) (Pusher, bool) {
		p, ok := apps[app]
		return p, ok
	}}
	if pacer != nil {
		opts.Pacer = pacer
	}
	d := NewDeliverer(store, scriptedFCM{}, &recordingPublisher{}, topo, slog.New(slog.NewTextHandler(io.Discard, nil)),
		prometheus.NewRegistry(), opts)
	return db, store, d
}

func insertNotification(t *testing.T, db *pgtest.DB, app string) uuid.UUID {
	t.Helper()
	id := uuid.New()
	if _, err := db.Pool.Exec(context.Background(), `INSERT INTO notifications (id, caller, type, request, expires_at, status, app)
		VALUES ($1, 'test', 't', jsonb_build_object('type', 't', 'recipients', '{"allDevices":{}}'::jsonb, 'content', '{"title":"hi"}'::jsonb, 'app', $2::text),
		now() + interval '1 hour', 'pending', $2)`, id, app); err != nil {
		t.Fatal(err)
	}
	return id
}

func TestSendChunkGoesThroughTheNotificationsAppPaced(t *testing.T) {
	t.Parallel()
	a, b := &appFCM{}, &appFCM{}
	pacer := &fakePacer{grant: 2}
	db, store, d := newAppsDeliverer(t, map[string]*appFCM{"default": a, "staff": b}, pacer)
	ctx := context.Background()
	for i, dev := range []struct{ app, token string }{
		{"default", "ok-a1"}, {"staff", "ok-b1"}, {"staff", "ok-b2"}, {"staff", "busy-slow-b3"}, {"staff", "gone-b4"}, {"staff", "ok-b5"},
	} {
		if _, err := db.Pool.Exec(ctx, `INSERT INTO devices (device_id, user_id, token, platform, app) VALUES ($1, 'u', $2, 'android', $3)`,
			fmt.Sprintf("d%d", i), dev.token, dev.app); err != nil {
			t.Fatal(err)
		}
	}
	n, err := store.Load(ctx, insertNotification(t, db, "staff").String())
	if err != nil {
		t.Fatal(err)
	}
	if n.App != "staff" {
		t.Fatalf("loaded app %q, want staff", n.App)
	}
	targets, _, err := store.Audience(ctx, n, "", 500)
	if err != nil {
		t.Fatal(err)
	}
	sum, err := d.SendChunk(ctx, n, targets, 1, true)
	if err != nil {
		t.Fatalf("SendChunk: %v", err)
	}
	if diff := cmp.Diff(Summary{Delivered: 3, Invalid: 1, Retrying: 1, Status: "retrying"}, sum); diff != "" {
		t.Errorf("summary (-want +got):\n%s", diff)
	}
	// Only staff's pusher sent, in pieces of the pacer's grant, each piece taken first, and
	// exactly: the last piece, smaller than a grant, takes no lease.
	if len(a.calls) != 0 {
		t.Errorf("the default app's pusher sent %v", a.calls)
	}
	want := [][]string{{"ok-b1", "ok-b2"}, {"busy-slow-b3", "gone-b4"}, {"ok-b5"}}
	if diff := cmp.Diff(want, b.calls); diff != "" {
		t.Errorf("staff's multicasts (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"staff:2", "staff:2", "staff:1"}, pacer.takes); diff != "" {
		t.Errorf("pacer takes (-want +got):\n%s", diff)
	}
	// The 429 backs the whole app off with its Retry-After.
	if diff := cmp.Diff([]string{"staff:30s"}, pacer.throttled); diff != "" {
		t.Errorf("throttles (-want +got):\n%s", diff)
	}
	// gone-b4 is deactivated in staff only.
	var active bool
	if err := db.Pool.QueryRow(ctx, `SELECT active FROM devices WHERE token = 'gone-b4'`).Scan(&active); err != nil || active {
		t.Errorf("gone-b4 active=%v (%v), want deactivated", active, err)
	}
}

func TestSendChunkUnknownAppIsDeadLettered(t *testing.T) {
	t.Parallel()
	db, store, d := newAppsDeliverer(t, map[string]*appFCM{"default": {}}, nil)
	ctx := context.Background()
	if _, err := db.Pool.Exec(ctx, `INSERT INTO devices (device_id, user_id, token, platform, app) VALUES ('d1', 'u', 'ok-1', 'android', 'shop')`); err != nil {
		t.Fatal(err)
	}
	n, err := store.Load(ctx, insertNotification(t, db, "shop").String())
	if err != nil {
		t.Fatal(err)
	}
	targets, _, err := store.Audience(ctx, n, "", 500)
	if err != nil || len(targets) != 1 {
		t.Fatalf("audience %v (%v), want one target", targets, err)
	}
	sum, err := d.SendChunk(ctx, n, targets, 1, true)
	if err != nil {
		t.Fatalf("SendChunk: %v", err)
	}
	if sum.Failed != 1 {
		t.Errorf("summary %+v, want the token failed (dead-lettered)", sum)
	}
	var code string
	if err := db.Pool.QueryRow(ctx, `SELECT error_code FROM deliveries WHERE notification_id = $1`, n.ID).Scan(&code); err != nil || code != CodeUnknownApp {
		t.Errorf("error code %q (%v), want %s", code, err, CodeUnknownApp)
	}
}

func TestSendChunkPacingEndsMidway(t *testing.T) {
	t.Parallel()
	b := &appFCM{}
	pacer := &fakePacer{grant: 1, failAfter: 1}
	db, store, d := newAppsDeliverer(t, map[string]*appFCM{"default": b}, pacer)
	ctx := context.Background()
	for i, tok := range []string{"ok-1", "ok-2"} {
		if _, err := db.Pool.Exec(ctx, `INSERT INTO devices (device_id, user_id, token, platform) VALUES ($1, 'u', $2, 'android')`,
			fmt.Sprintf("d%d", i), tok); err != nil {
			t.Fatal(err)
		}
	}
	n, err := store.Load(ctx, insertNotification(t, db, "default").String())
	if err != nil {
		t.Fatal(err)
	}
	targets, _, _ := store.Audience(ctx, n, "", 500)
	// The first piece went out; the second never got its grant: it is retried, not sent
	// twice by a requeued chunk.
	sum, err := d.SendChunk(ctx, n, targets, 1, false)
	if err != nil {
		t.Fatalf("SendChunk: %v", err)
	}
	if sum.Delivered != 1 || sum.Retrying != 1 {
		t.Errorf("summary %+v, want 1 delivered and 1 retrying", sum)
	}
	// With no grant at all, nothing was sent and the chunk fails as a whole.
	pacer.failAfter, pacer.takes = 1, []string{"x"}
	if _, err := d.SendChunk(ctx, n, targets[1:], 2, false); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("SendChunk with no grant: %v, want the pacer's error", err)
	}
}

func TestSendChunksReservesSmallChunksTogether(t *testing.T) {
	t.Parallel()
	a, b := &appFCM{}, &appFCM{}
	pacer := &fakePacer{grant: 10}
	db, store, d := newAppsDeliverer(t, map[string]*appFCM{"default": a, "staff": b}, pacer)
	ctx := context.Background()
	var chunks []Chunk
	for i, app := range []string{"default", "default", "staff", "default"} {
		n, err := store.Load(ctx, insertNotification(t, db, app).String())
		if err != nil {
			t.Fatal(err)
		}
		chunks = append(chunks, Chunk{Notification: n, Targets: []Target{{Token: fmt.Sprintf("ok-%d", i)}}, Attempt: 1, Final: true})
	}
	_, errs := d.SendChunks(ctx, chunks)
	for i, err := range errs {
		if err != nil {
			t.Errorf("chunk %d: %v", i, err)
		}
	}
	// One reservation per app for the whole batch, not one per notification, which may
	// take a lease of the rest of a grant for the next batches.
	slices.Sort(pacer.takes)
	if diff := cmp.Diff([]string{"default:3 leased", "staff:1 leased"}, pacer.takes); diff != "" {
		t.Errorf("pacer takes (-want +got):\n%s", diff)
	}
	if len(a.calls) != 3 || len(b.calls) != 1 {
		t.Errorf("multicasts: default %v, staff %v; want 3 and 1", a.calls, b.calls)
	}
}
