package deadletter

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	amqp "github.com/rabbitmq/amqp091-go"

	"notify/pkg/pgtest"
	"notify/pkg/rabbit"
	"notify/pkg/rabbit/rabbittest"
	"notify/pkg/testenv"
)

// Helpers for the integration tests: each test gets its own database (pgtest) and its own
// topology name, so tests run in parallel and never touch a running system.

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// env is one test's database and broker topology.
type env struct {
	amqpURL string
	db      *pgtest.DB
	topo    rabbit.Topology
	conn    *rabbit.Conn
	pub     *rabbit.Publisher
}

// newEnv creates a database and a topology with a unique name (deleted when the test ends)
// and connects to the broker.
func newEnv(t *testing.T, deliveryLimit int) *env {
	t.Helper()
	e := &env{amqpURL: testenv.AMQPURL(t)}
	e.db = pgtest.New(t)
	e.topo = rabbittest.Topology(t, e.amqpURL, "deadletter", rabbit.Topology{DeliveryLimit: deliveryLimit})
	e.conn = rabbittest.StartConn(t, e.amqpURL, rabbit.ConnOptions{Name: e.topo.Name, Topology: &e.topo})
	e.pub = rabbit.NewPublisher(e.conn, e.topo.Exchange(), rabbit.PublisherOptions{})
	return e
}

// runUntilStopped runs f in a goroutine; the returned stop cancels its ctx and waits for
// it (also at the end of the test). f must return nil.
func runUntilStopped(t *testing.T, what string, f func(ctx context.Context) error) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("%s: %v", what, err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// startConsumer consumes the topology's dead queue on conn with a fresh Handler.
func startConsumer(t *testing.T, e *env, conn *rabbit.Conn, workers int) (*Handler, func()) {
	t.Helper()
	h := NewHandler(NewStore(e.db.Pool), testLogger(t), prometheus.NewRegistry())
	c := rabbit.NewConsumer(conn, e.topo.DeadQueue(), h.Handle, rabbit.ConsumerOptions{
		Concurrency: workers, Prefetch: 4 * workers, ShutdownTimeout: 2 * time.Second,
		MinRequeuePause: 50 * time.Millisecond, MaxRequeuePause: 200 * time.Millisecond,
	})
	return h, runUntilStopped(t, "Consumer.Run", c.Run)
}

// startAlerter runs an Alerter on pool with short intervals.
func startAlerter(t *testing.T, pool *pgxpool.Pool, s Sink, opts AlerterOptions) (*Alerter, func()) {
	t.Helper()
	a := NewAlerter(pool, s, testLogger(t), prometheus.NewRegistry(), opts)
	return a, runUntilStopped(t, "Alerter.Run", a.Run)
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// count runs a query that returns one integer.
func count(t *testing.T, pool *pgxpool.Pool, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// insertNotification inserts a notification with the given status and returns its id.
func insertNotification(t *testing.T, pool *pgxpool.Pool, status string) string {
	t.Helper()
	id := uuid.NewString()
	_, err := pool.Exec(context.Background(), `
		INSERT INTO notifications (id, caller, type, status, request, expires_at)
		VALUES ($1, 'test', 'test', $2, '{}', now() + interval '1 hour')`, id, status)
	if err != nil {
		t.Fatalf("insert notification: %v", err)
	}
	return id
}

func notificationStatus(t *testing.T, pool *pgxpool.Pool, id string) string {
	t.Helper()
	var s string
	if err := pool.QueryRow(context.Background(), `SELECT status FROM notifications WHERE id = $1`, id).Scan(&s); err != nil {
		t.Fatalf("read notification %s: %v", id, err)
	}
	return s
}

// insertDeadLetters stores n rows of a reason directly, as the consumer would, each
// covering two tokens of one notification.
func insertDeadLetters(t *testing.T, pool *pgxpool.Pool, reason string, n int) {
	t.Helper()
	_, err := pool.Exec(context.Background(), `
		INSERT INTO dead_letters (message_id, notification_id, reason, token_count, tokens)
		SELECT $1 || '-' || g, gen_random_uuid(), $2, 2, ARRAY['a', 'b']
		FROM generate_series(1, $3) g`, uuid.NewString(), reason, n)
	if err != nil {
		t.Fatalf("insert dead letters: %v", err)
	}
}

// publishRaw publishes m to the topology's exchange without our Publisher, which insists on
// a MessageId, and waits for the broker's confirm.
func publishRaw(t *testing.T, e *env, key string, msgs ...amqp.Publishing) {
	t.Helper()
	conn, err := amqp.Dial(e.amqpURL)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatalf("channel: %v", err)
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatalf("confirm mode: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, m := range msgs {
		conf, err := ch.PublishWithDeferredConfirmWithContext(ctx, e.topo.Exchange(), key, true, false, m)
		if err != nil {
			t.Fatalf("publish: %v", err)
		}
		if ok, err := conf.WaitContext(ctx); !ok || err != nil {
			t.Fatalf("publish not confirmed: ok=%v err=%v", ok, err)
		}
	}
}

// queueDepth returns how many messages are ready in a queue.
func queueDepth(t *testing.T, e *env, queue string) int {
	t.Helper()
	conn, err := amqp.Dial(e.amqpURL)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatalf("channel: %v", err)
	}
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	if err != nil {
		t.Fatalf("inspect %s: %v", queue, err)
	}
	return q.Messages
}

// fakeSlack stands in for both Slack APIs the service uses: an incoming webhook (any path,
// JSON body) and chat.postMessage (form body). It answers with the status the test sets.
type fakeSlack struct {
	srv *httptest.Server

	mu         sync.Mutex
	status     int
	retryAfter string
	reqs       []slackRequest
}

// slackRequest is one request the fake received, and what it answered.
type slackRequest struct {
	Path    string
	Status  int
	Text    string
	Channel string
	Token   string
	At      time.Time
}

func newFakeSlack(t *testing.T) *fakeSlack {
	f := &fakeSlack{status: http.StatusOK}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeSlack) serve(w http.ResponseWriter, r *http.Request) {
	req := slackRequest{Path: r.URL.Path, At: time.Now()}
	body, _ := io.ReadAll(r.Body)
	ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	switch ct {
	case "application/json":
		var m struct{ Text, Channel string }
		_ = json.Unmarshal(body, &m)
		req.Text, req.Channel = m.Text, m.Channel
	case "application/x-www-form-urlencoded":
		form, _ := url.ParseQuery(string(body))
		req.Text, req.Channel, req.Token = form.Get("text"), form.Get("channel"), form.Get("token")
	}
	f.mu.Lock()
	req.Status = f.status
	retryAfter := f.retryAfter
	f.reqs = append(f.reqs, req)
	f.mu.Unlock()

	switch {
	case req.Status == http.StatusTooManyRequests:
		w.Header().Set("Retry-After", retryAfter)
		w.WriteHeader(req.Status)
	case req.Status != http.StatusOK:
		http.Error(w, "<html>slack is down</html>", req.Status)
	case strings.HasSuffix(req.Path, "/chat.postMessage"):
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"ok":true,"channel":%q,"ts":"1700000000.000100"}`, req.Channel)
	default:
		fmt.Fprint(w, "ok")
	}
}

// set makes the fake answer every following request with status (and Retry-After).
func (f *fakeSlack) set(status int, retryAfter string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.status, f.retryAfter = status, retryAfter
}

// requests returns what the fake received so far; with a status, only those it answered so.
func (f *fakeSlack) requests(status ...int) []slackRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []slackRequest
	for _, r := range f.reqs {
		if len(status) == 0 || r.Status == status[0] {
			out = append(out, r)
		}
	}
	return out
}

var groupLine = regexp.MustCompile(`(?m)^• \*([^*]+)\*: (\d+) dead letters, (\d+) tokens`)

// countsByReason adds up the dead letters per reason that alert texts announce.
func countsByReason(t *testing.T, texts ...string) map[string]int {
	t.Helper()
	got := map[string]int{}
	for _, text := range texts {
		ms := groupLine.FindAllStringSubmatch(text, -1)
		if len(ms) == 0 {
			t.Errorf("alert text has no reason lines:\n%s", text)
		}
		for _, m := range ms {
			n, _ := strconv.Atoi(m[2])
			got[m[1]] += n
		}
	}
	return got
}
