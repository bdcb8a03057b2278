package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"notify/pkg/pgtest"
	"notify/pkg/schema"
	"notify/pkg/testenv"
	notifyv1 "notify/proto/gen/notify/v1"
)

func TestMigrateCommand(t *testing.T) {
	t.Parallel()
	db := pgtest.NewEmpty(t)
	getenv := env(map[string]string{"DATABASE_URL": db.URL, "LOG_LEVEL": "warn"})
	migrate := func(args ...string) (code int, stdout, stderr string) {
		var out, errOut bytes.Buffer
		code = runMigrate(context.Background(), args, getenv, &out, &errOut)
		return code, out.String(), errOut.String()
	}
	ms, err := schema.Migrations()
	if err != nil {
		t.Fatal(err)
	}
	countState := func(out, state string) int {
		n := 0
		for _, line := range strings.Split(out, "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[1] == state {
				n++
			}
		}
		return n
	}

	code, out, stderr := migrate("status")
	if code != 3 || countState(out, "pending") != len(ms) || !strings.Contains(stderr, "pending") {
		t.Errorf("status of an empty database = %d\n%s%s; want 3 and every migration pending", code, out, stderr)
	}
	if code, _, stderr := migrate("up"); code != 0 || !strings.Contains(stderr, schema.Latest()) {
		t.Fatalf("up = %d, %s; want 0 and the version reached", code, stderr)
	}
	code, out, stderr = migrate("status")
	if code != 0 || countState(out, "applied") != len(ms) || !strings.Contains(stderr, "up to date") {
		t.Errorf("status after up = %d\n%s%s; want 0 and every migration applied", code, out, stderr)
	}
	if code, _, stderr := migrate("up"); code != 0 {
		t.Errorf("up again = %d, %s; want 0", code, stderr)
	}

	const future = "9000_from_a_newer_release"
	if _, err := db.Pool.Exec(context.Background(), "INSERT INTO schema_migrations (version) VALUES ($1)", future); err != nil {
		t.Fatal(err)
	}
	for _, sub := range []string{"up", "status"} {
		code, out, stderr := migrate(sub)
		if code != 4 || !strings.Contains(stderr, future) || !strings.Contains(stderr, schema.Latest()) {
			t.Errorf("%s on a newer database = %d, %s; want 4 and both versions named", sub, code, stderr)
		}
		if sub == "status" && !strings.Contains(out, "newer than this binary") {
			t.Errorf("status does not mark %s as newer:\n%s", future, out)
		}
	}

	for _, args := range [][]string{nil, {"down"}, {"up", "now"}} {
		if code, _, stderr := migrate(args...); code != 2 || !strings.Contains(stderr, "Usage:") {
			t.Errorf("migrate %q = %d, %s; want 2 and the usage", args, code, stderr)
		}
	}
	if code, out, _ := migrate("--help"); code != 0 || !strings.Contains(out, "producer migrate up") {
		t.Errorf("migrate --help = %d, %s; want 0 and the usage on stdout", code, out)
	}
}

// TestMigrateUpLogsJSON: `producer migrate up`, the Kubernetes migration Job's command, logs
// in the services' JSON (it logged logfmt text, which the Job's log collection did not
// parse); only its closing summary is plain text.
func TestMigrateUpLogsJSON(t *testing.T) {
	t.Parallel()
	db := pgtest.NewEmpty(t)
	var out, errOut bytes.Buffer
	if code := runMigrate(t.Context(), []string{"up"}, env(map[string]string{"DATABASE_URL": db.URL}), &out, &errOut); code != 0 {
		t.Fatalf("up = %d, %s", code, errOut.String())
	}
	applied := 0
	for line := range strings.Lines(errOut.String()) {
		if strings.HasPrefix(line, "database at version ") {
			continue
		}
		var rec struct{ Msg, Service string }
		if err := json.Unmarshal([]byte(line), &rec); err != nil || rec.Service != "producer" {
			t.Errorf("stderr line %q is not a JSON log line with service producer (%v)", line, err)
		}
		if rec.Msg == "applied migration" {
			applied++
		}
	}
	if applied == 0 {
		t.Errorf("no \"applied migration\" line on stderr:\n%s", errOut.String())
	}
}

// TestWaitForDatabaseSaysWhatItWaitsFor: a producer whose database does not answer at start
// logs that it waits for it (it used to wait its minute in silence, not ready and saying
// nothing), and stops waiting when ctx ends, naming DATABASE_URL.
func TestWaitForDatabaseSaysWhatItWaitsFor(t *testing.T) {
	t.Parallel()
	pool := unreachablePool(t)
	var buf syncBuffer
	ctx, cancel := context.WithTimeout(t.Context(), 2500*time.Millisecond)
	defer cancel()
	err := waitForDatabase(ctx, pool, slog.New(slog.NewJSONHandler(&buf, nil)), 0)
	if err == nil || !strings.Contains(err.Error(), "DATABASE_URL: database not reachable") {
		t.Errorf("error %v, want DATABASE_URL: database not reachable", err)
	}
	if !strings.Contains(buf.String(), `"msg":"waiting for the database (DATABASE_URL)"`) || !strings.Contains(buf.String(), "connection refused") {
		t.Errorf("log:\n%s\nwant a line saying it waits for the database, with the error", buf.String())
	}
}

// TestWaitForDatabaseGivesUpOnlyWhenAsked: the server waits for its database as long as it
// takes (it used to exit after a minute, unlike the other services); `producer migrate`
// gives up after its limit and says so, naming DATABASE_URL.
func TestWaitForDatabaseGivesUpOnlyWhenAsked(t *testing.T) {
	t.Parallel()
	pool := unreachablePool(t)
	var buf syncBuffer
	start := time.Now()
	err := waitForDatabase(t.Context(), pool, slog.New(slog.NewJSONHandler(&buf, nil)), 1500*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "DATABASE_URL: database not reachable") {
		t.Errorf("with a limit: error %v, want DATABASE_URL: database not reachable", err)
	}
	if took := time.Since(start); took < 1500*time.Millisecond {
		t.Errorf("gave up after %v, before its limit", took)
	}
	if !strings.Contains(buf.String(), `"gives_up_in"`) {
		t.Errorf("log with a limit:\n%s\nwant gives_up_in", buf.String())
	}

	// Without a limit it is still waiting well past that limit, until ctx ends.
	buf = syncBuffer{}
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Second)
	defer cancel()
	start = time.Now()
	err = waitForDatabase(ctx, pool, slog.New(slog.NewJSONHandler(&buf, nil)), 0)
	if took := time.Since(start); took < 4*time.Second || ctx.Err() == nil {
		t.Errorf("without a limit it returned after %v (%v), before ctx ended", took, err)
	}
	if strings.Contains(buf.String(), `"gives_up_in"`) || !strings.Contains(buf.String(), `"waited"`) {
		t.Errorf("log without a limit:\n%s\nwant waited and no gives_up_in", buf.String())
	}
}

// TestStartStopsWhenPostgreSQLRefusesDatabaseURL: a wrong password is a setting to fix, not a
// database to wait for: the producer stopped on nothing and logged "waiting for the database
// … (SQLSTATE 28P01)" as a warning every 10 s, and `producer migrate` waited its minute. Both
// now stop at once with an error naming DATABASE_URL (the server's run returning it is its
// exit 1). The role notify exists; only the URL's password is wrong.
func TestStartStopsWhenPostgreSQLRefusesDatabaseURL(t *testing.T) {
	t.Parallel()
	u, err := url.Parse(testenv.DatabaseURL(t))
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(u.User.Username(), "wrongpw")
	wrong := u.String()
	// Far longer than a refused connection takes: had it waited, ctx would end first.
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()

	err = run(ctx, env(map[string]string{
		"DATABASE_URL": wrong, "GRPC_ADDR": freeAddr(t), "METRICS_ADDR": freeAddr(t), "LOG_LEVEL": "error",
		"AMQP_URL": "amqp://guest:guest@" + freeAddr(t) + "/",
	}))
	if err == nil || !strings.HasPrefix(err.Error(), "DATABASE_URL: ") || !strings.Contains(err.Error(), "28P01") || ctx.Err() != nil {
		t.Errorf("run with a wrong password = %v (ctx %v), want an error starting DATABASE_URL: with the SQLSTATE, before ctx ends", err, ctx.Err())
	}

	var out, errOut bytes.Buffer
	code := runMigrate(ctx, []string{"status"}, env(map[string]string{"DATABASE_URL": wrong}), &out, &errOut)
	if code == 0 || !strings.Contains(errOut.String(), "DATABASE_URL: PostgreSQL refuses the connection") || ctx.Err() != nil {
		t.Errorf("migrate status with a wrong password = %d, stderr %q (ctx %v); want a failure naming DATABASE_URL before ctx ends", code, errOut.String(), ctx.Err())
	}
	if strings.Contains(out.String()+errOut.String(), "wrongpw") {
		t.Errorf("the password is quoted:\n%s%s", out.String(), errOut.String())
	}
}

// unreachablePool is a pool for a database address nothing listens on (connection refused).
func unreachablePool(t *testing.T) *pgxpool.Pool {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close() // nothing listens there now
	pool, err := pgxpool.New(t.Context(), "postgres://notify:notify@"+addr+"/notify?sslmode=disable&connect_timeout=1")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// syncBuffer is a bytes.Buffer safe for a logger and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestAPIAnswersWhileWaitingForMigrations: a producer with MIGRATE_ON_START=false waiting
// for `producer migrate up` answers its API's calls UNAVAILABLE with RetryInfo at once (and
// its health service NOT_SERVING) instead of accepting connections and never answering:
// notifyctl waited 20 s and then blamed TLS ("error reading server preface"). Once the
// schema is migrated the same connection reaches the API (here: refused for want of a key).
func TestAPIAnswersWhileWaitingForMigrations(t *testing.T) {
	t.Parallel()
	db := pgtest.NewEmpty(t)
	grpcAddr, metricsAddr := freeAddr(t), freeAddr(t)
	getenv := env(map[string]string{
		"DATABASE_URL": db.URL, "MIGRATE_ON_START": "false", "GRPC_ADDR": grpcAddr,
		"METRICS_ADDR": metricsAddr, "LOG_LEVEL": "error", "AMQP_URL": "amqp://guest:guest@" + freeAddr(t) + "/",
	})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- run(ctx, getenv) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	}()

	conn := dial(t, grpcAddr, insecure.NewCredentials())
	publish := func() error {
		callCtx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		_, err := notifyv1.NewNotificationServiceClient(conn).Publish(callCtx, &notifyv1.PublishRequest{})
		return err
	}
	// Until the listener is up the call fails as unreachable, also UNAVAILABLE: wait for
	// the producer's own answer.
	var err error
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if err = publish(); strings.Contains(status.Convert(err).Message(), "starting") {
			break
		}
	}
	st := status.Convert(err)
	if st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "migrations") || len(st.Details()) == 0 {
		t.Fatalf("Publish while migrations are pending = %v (details %v); want UNAVAILABLE naming the migrations, with RetryInfo", err, st.Details())
	}
	if _, ok := st.Details()[0].(*errdetails.RetryInfo); !ok {
		t.Errorf("details = %v, want RetryInfo", st.Details())
	}
	if err := check(t.Context(), conn); err != nil {
		t.Errorf("health check while migrations are pending = %v, want an answer (NOT_SERVING)", err)
	}

	var out, errOut bytes.Buffer
	if code := runMigrate(t.Context(), []string{"up"}, env(map[string]string{"DATABASE_URL": db.URL, "LOG_LEVEL": "warn"}), &out, &errOut); code != 0 {
		t.Fatalf("migrate up = %d: %s", code, errOut.String())
	}
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if err = publish(); status.Code(err) != codes.Unavailable {
			break
		}
	}
	if status.Code(err) != codes.Unauthenticated {
		t.Errorf("Publish without a key after the migration = %v, want UNAUTHENTICATED from the API", err)
	}
}

// freeAddr is a 127.0.0.1 address nothing listens on now.
func freeAddr(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	return lis.Addr().String()
}
