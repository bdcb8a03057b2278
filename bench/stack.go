package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"notify/pkg/schema"
)

// serviceNames are started in this order (the emulator first: sender and retrier send to it)
// and stopped in the reverse order.
var serviceNames = []string{"fcm-emulator", "producer", "sender", "retrier", "deadletter"}

// service is one running service process.
type service struct {
	name      string // unique in the run: the binary's name, or e.g. "sender-2" for a second replica
	binary    string // the service it runs: the group its CPU is counted in
	cmd       *exec.Cmd
	logPath   string
	healthURL string
	done      chan struct{} // closed when the process has exited; err is set before
	err       error
	stopping  bool // the bench sent SIGTERM: an exit is expected
	// last is the process's reading just before the bench stopped it mid-run (replaced by
	// another configuration): its resources are reported from it.
	last *procStat
}

func (s *service) pid() int { return s.cmd.Process.Pid }

func (s *service) exited() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// tail returns the last n lines of the service's log.
func (s *service) tail(n int) string {
	b, _ := os.ReadFile(s.logPath)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// stack is the bench's own notify: its own database, RabbitMQ topology and ports.
type stack struct {
	cfg      config
	log      *slog.Logger
	dbName   string
	dbURL    string
	pool     *pgxpool.Pool // the bench's own reads (backlogs, checks)
	topology string
	mgmt     *management

	emulatorURL string
	grpcAddr    string
	// referenceAddr is the in-memory push server's gRPC address while it runs.
	referenceAddr string
	services      []*service

	// apiKey, when set, is sent as "authorization: Bearer <key>" on every gRPC call.
	apiKey string
}

// newStack creates and migrates the bench's database; start runs the services.
func newStack(ctx context.Context, cfg config, log *slog.Logger, runID string) (*stack, error) {
	st := &stack{
		cfg:      cfg,
		log:      log,
		dbName:   "notify_bench_" + runID,
		topology: "bench-" + runID,
	}
	var err error
	if st.mgmt, err = newManagement(cfg.ManagementURL); err != nil {
		return nil, err
	}
	if st.dbURL, err = withDatabase(cfg.DatabaseURL, st.dbName); err != nil {
		return nil, err
	}
	admin, err := pgx.Connect(ctx, cfg.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("connect to PostgreSQL (DATABASE_URL, run scripts/devenv.sh): %w", err)
	}
	defer admin.Close(context.WithoutCancel(ctx))
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{st.dbName}.Sanitize()); err != nil {
		return nil, fmt.Errorf("create database %s: %w", st.dbName, err)
	}
	if cfg.StatusEventsOff {
		if _, err := admin.Exec(ctx, "ALTER DATABASE "+pgx.Identifier{st.dbName}.Sanitize()+" SET "+schema.StatusEventsSetting+" = off"); err != nil {
			st.dropDatabase()
			return nil, fmt.Errorf("turn status events off in %s: %w", st.dbName, err)
		}
	}
	pool, err := pgxpool.New(ctx, st.dbURL)
	if err != nil {
		st.dropDatabase()
		return nil, fmt.Errorf("open %s: %w", st.dbName, err)
	}
	st.pool = pool
	if _, err := schema.Migrate(ctx, pool, slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
		st.close()
		return nil, fmt.Errorf("migrate %s: %w", st.dbName, err)
	}
	return st, nil
}

// seedHistory writes n past notifications with two delivered tokens each (tokens of no
// registered device) and analyzes the database. A production database has such a history,
// and PostgreSQL plans from it: on an empty database the plans of the delivery queries, and
// so the figures, would depend on when autovacuum happens to analyze the tables.
func (st *stack) seedHistory(ctx context.Context, n int) error {
	if n > 0 {
		if _, err := st.pool.Exec(ctx, `
			WITH n AS (
				INSERT INTO notifications (id, caller, type, request, expires_at, status, total, delivered, created_at, updated_at)
				SELECT gen_random_uuid(), 'bench-history', 'bench.history', '{"type":"bench.history"}',
					now() - interval '1 day', 'delivered', 2, 2, now() - interval '2 days', now() - interval '2 days'
				FROM generate_series(1, $1)
				RETURNING id
			)
			INSERT INTO deliveries (notification_id, token, outcome, attempts, updated_at)
			SELECT n.id, 'bench-history-' || n.id || '-' || k, 'delivered', 1, now() - interval '2 days'
			FROM n, generate_series(1, 2) k`, n); err != nil {
			return fmt.Errorf("write %d past notifications: %w", n, err)
		}
	}
	return st.analyze(ctx)
}

// analyze refreshes the planner's statistics, as autovacuum does after bulk writes; the
// phases call it after registering devices so that plans never depend on its timing.
func (st *stack) analyze(ctx context.Context) error {
	if _, err := st.pool.Exec(ctx, "ANALYZE"); err != nil {
		return fmt.Errorf("analyze the bench database: %w", err)
	}
	return nil
}

// start runs every service with the stack's environment and waits until each is healthy.
func (st *stack) start(ctx context.Context) error {
	if err := os.MkdirAll(st.cfg.LogDir, 0o755); err != nil {
		return err
	}
	for _, name := range serviceNames {
		if err := st.startService(ctx, name, name, nil); err != nil {
			return err
		}
	}
	return nil
}

// benchApps are the apps the producer knows besides "default": the apps phase's two
// Firebase apps (sender and retrier learn them from the paced phases' FCM_APPS_FILE).
var benchApps = []string{"bench-a", "bench-b"}

// startService starts binary as the service name, with the stack's environment and extra
// (where an empty value unsets a variable), and waits until it is healthy.
func (st *stack) startService(ctx context.Context, name, binary string, extra map[string]string) error {
	env := map[string]string{
		"DATABASE_URL":  st.dbURL,
		"AMQP_URL":      st.cfg.AMQPURL,
		"AMQP_TOPOLOGY": st.topology,
	}
	if _, set := st.cfg.ServiceEnv["SHUTDOWN_TIMEOUT"]; !set {
		env["SHUTDOWN_TIMEOUT"] = "10s"
	}
	// The emulator has no quota unless told: the fan-out phase compares notify's raw speed with
	// the raw FCM edge, so sends are not paced to FCM's real 600,000/min unless asked
	// (FCM_RATE_PER_MINUTE in make bench's environment).
	if _, set := st.cfg.ServiceEnv["FCM_RATE_PER_MINUTE"]; !set {
		env["FCM_RATE_PER_MINUTE"] = "1000000000"
	}
	var health string
	switch binary {
	case "fcm-emulator":
		addr, err := freeAddr()
		if err != nil {
			return err
		}
		env["FCM_EMULATOR_ADDR"] = addr
		st.emulatorURL = "http://" + addr
		health = st.emulatorURL + "/healthz"
	default:
		addr, err := freeAddr()
		if err != nil {
			return err
		}
		env["METRICS_ADDR"] = addr
		health = "http://" + addr + "/healthz"
		// Never real FCM, whatever credentials the environment holds.
		env["FCM_ENDPOINT"] = st.emulatorURL + "/v1"
	}
	if binary == "producer" {
		addr, err := freeAddr()
		if err != nil {
			return err
		}
		env["GRPC_ADDR"] = addr
		env["APPS"] = strings.Join(append([]string{"default"}, benchApps...), ",")
		st.grpcAddr = addr
	}
	path := filepath.Join(st.cfg.BinDir, binary)
	if binary == memserverBinary {
		// The in-memory push server is this very binary in its hidden mode.
		addr, err := freeAddr()
		if err != nil {
			return err
		}
		env["GRPC_ADDR"] = addr
		env[memserverEnv] = "1"
		st.referenceAddr = addr
		if path, err = os.Executable(); err != nil {
			return fmt.Errorf("start %s: %w", name, err)
		}
	}
	for k, v := range extra {
		env[k] = v
	}

	s := &service{name: name, binary: binary, healthURL: health, done: make(chan struct{}),
		logPath: filepath.Join(st.cfg.LogDir, name+".log")}
	logFile, err := os.Create(s.logPath)
	if err != nil {
		return err
	}
	s.cmd = exec.Command(path)
	s.cmd.Env = os.Environ() // tuning variables pass through; the last value of a key wins
	for k, v := range env {
		s.cmd.Env = append(s.cmd.Env, k+"="+v)
	}
	s.cmd.Stdout, s.cmd.Stderr = logFile, logFile
	// Its own process group: a Ctrl-C in the terminal reaches the bench, which stops the
	// services in order, rather than every process at once.
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := s.cmd.Start(); err != nil {
		logFile.Close()
		return fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		s.err = s.cmd.Wait()
		logFile.Close()
		close(s.done)
	}()
	st.services = append(st.services, s)

	deadline := time.Now().Add(30 * time.Second)
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, health, nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if s.exited() {
			return fmt.Errorf("%s exited at start (%v); last lines of %s:\n%s", name, s.err, s.logPath, s.tail(20))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not healthy after 30s; last lines of %s:\n%s", name, s.logPath, s.tail(20))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// stopService stops the running service name (SIGTERM, then the time it takes to finish its
// work) and keeps its last resource reading; the run goes on without it.
func (st *stack) stopService(name string) error {
	for _, s := range st.services {
		if s.name != name || s.exited() {
			continue
		}
		if ps, err := readProc(s.pid()); err == nil {
			s.last = &ps
		}
		s.stopping = true
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.done:
			if s.err != nil {
				return fmt.Errorf("%s exited with %v after SIGTERM; see %s", name, s.err, s.logPath)
			}
			return nil
		case <-time.After(45 * time.Second):
			_ = s.cmd.Process.Kill()
			<-s.done
			return fmt.Errorf("%s did not stop within 45s of SIGTERM and was killed; see %s", name, s.logPath)
		}
	}
	return fmt.Errorf("stop %s: no such service running", name)
}

// running reports whether the service name runs.
func (st *stack) running(name string) bool {
	for _, s := range st.services {
		if s.name == name && !s.exited() {
			return true
		}
	}
	return false
}

// crashed names the services that exited without being asked to.
func (st *stack) crashed() []string {
	var out []string
	for _, s := range st.services {
		if s.exited() && !s.stopping {
			out = append(out, fmt.Sprintf("%s exited unexpectedly (%v); see %s", s.name, s.err, s.logPath))
		}
	}
	return out
}

// stop sends SIGTERM to every service in reverse start order and waits for each; it
// returns a problem for every service that did not exit cleanly.
func (st *stack) stop() []string {
	var problems []string
	for i := len(st.services) - 1; i >= 0; i-- {
		s := st.services[i]
		if s.exited() {
			if !s.stopping {
				problems = append(problems, fmt.Sprintf("%s had exited before the end (%v); see %s", s.name, s.err, s.logPath))
			}
			continue
		}
		s.stopping = true
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.done:
			if s.err != nil {
				problems = append(problems, fmt.Sprintf("%s exited with %v after SIGTERM; see %s", s.name, s.err, s.logPath))
			}
		case <-time.After(45 * time.Second):
			_ = s.cmd.Process.Kill()
			<-s.done
			problems = append(problems, fmt.Sprintf("%s did not stop within 45s of SIGTERM and was killed; see %s", s.name, s.logPath))
		}
	}
	return problems
}

// close stops whatever still runs and removes the bench's topology and database. It works
// on a fresh context: it must run even after Ctrl-C.
func (st *stack) close() {
	for _, s := range st.services {
		if !s.exited() {
			s.stopping = true
			_ = s.cmd.Process.Kill()
			<-s.done
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, prefix := range []string{st.topology, st.rawTopology()} {
		if err := st.mgmt.deleteTopology(ctx, prefix); err != nil {
			st.log.Warn("could not delete the bench's queues; delete them in the management UI", "prefix", prefix, "err", err)
		}
	}
	if st.pool != nil {
		st.pool.Close()
	}
	st.dropDatabase()
}

func (st *stack) dropDatabase() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, st.cfg.DatabaseURL)
	if err == nil {
		defer conn.Close(ctx)
		_, err = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{st.dbName}.Sanitize()+" WITH (FORCE)")
	}
	if err != nil {
		st.log.Warn("could not drop the bench's database; drop it by hand", "database", st.dbName, "err", err)
	}
}

// backends returns the pids of the PostgreSQL backends connected to the bench's database,
// autovacuum workers included: the database work the bench caused, apart from the server's
// shared background processes.
func (st *stack) backends() []int {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	rows, err := st.pool.Query(ctx, "SELECT pid FROM pg_stat_activity WHERE datname = $1", st.dbName)
	if err != nil {
		return nil
	}
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		return nil
	}
	out := make([]int, len(pids))
	for i, p := range pids {
		out[i] = int(p)
	}
	return out
}

// rawTopology names the scratch topology of the raw broker baseline.
func (st *stack) rawTopology() string { return st.topology + "-raw" }

// dial opens a gRPC connection to the producer. Every call made on it carries the API key.
func (st *stack) dial() (*grpc.ClientConn, error) { return st.dialTo("producer", st.grpcAddr) }

// dialReference opens a gRPC connection to the in-memory push server, exactly as dial does
// to the producer (the API key included, which it ignores).
func (st *stack) dialReference() (*grpc.ClientConn, error) {
	return st.dialTo("the in-memory push server", st.referenceAddr)
}

func (st *stack) dialTo(what, addr string) (*grpc.ClientConn, error) {
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	if st.apiKey != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(bearer(st.apiKey)))
	}
	conn, err := grpc.NewClient(addr, opts...)
	if err != nil {
		return nil, fmt.Errorf("dial %s %s: %w", what, addr, err)
	}
	return conn, nil
}

// bearer is gRPC per-call credentials: "authorization: Bearer <key>". Plaintext is allowed
// because the bench talks to its own producer over loopback.
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (bearer) RequireTransportSecurity() bool { return false }

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func withDatabase(rawURL, database string) (string, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "", fmt.Errorf("DATABASE_URL: %w", err)
	}
	u.Path = "/" + database
	return u.String(), nil
}

// errServicesDown is returned by a phase that stopped because a service crashed.
var errServicesDown = errors.New("a service exited during the run")
