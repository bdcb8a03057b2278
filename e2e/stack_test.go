package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"notify/pkg/fcmemu"
	"notify/pkg/pgtest"
	"notify/pkg/schema"
	"notify/pkg/testenv"
	notifyv1 "notify/proto/gen/notify/v1"
)

var services = []string{"producer", "sender", "retrier", "deadletter", "fcm-emulator"}

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// TestMain removes the binaries built for the run.
func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		_ = os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// binaries builds every service once per test process.
func binaries(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "notify-e2e-bin-")
		if buildErr != nil {
			return
		}
		_, file, _, _ := runtime.Caller(0)
		root := filepath.Join(filepath.Dir(file), "..")
		for _, s := range services {
			cmd := exec.Command("go", "build", "-o", filepath.Join(binDir, s), ".")
			cmd.Dir = filepath.Join(root, "services", s)
			if out, err := cmd.CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("build %s: %v\n%s", s, err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

// stack is one test's notify: its own database, its own RabbitMQ topology, its own ports.
type stack struct {
	t        *testing.T
	bin      string
	db       *pgtest.DB
	amqpURL  string
	mgmtURL  string
	topology string
	env      map[string]string // shared by every service

	emulatorURL string
	grpcAddr    string
	adminKey    string // secret of the admin API key "e2e-admin"

	mu    sync.Mutex
	procs []*proc
}

func newStack(t *testing.T) *stack {
	t.Helper()
	return newStackOn(t, pgtest.New(t), testenv.AMQPURL(t), testenv.ManagementURL(t))
}

// newStackOn builds a stack on the given database and broker. Without a management URL
// the stack's queues are left in place at the end (the broker is the test's own).
func newStackOn(t *testing.T, db *pgtest.DB, amqpURL, mgmtURL string) *stack {
	t.Helper()
	s := &stack{
		t:        t,
		bin:      binaries(t),
		db:       db,
		amqpURL:  amqpURL,
		mgmtURL:  mgmtURL,
		topology: "e2e-" + randomHex(4),
	}
	s.env = map[string]string{
		"DATABASE_URL":     s.db.URL,
		"AMQP_URL":         s.amqpURL,
		"AMQP_TOPOLOGY":    s.topology,
		"LOG_LEVEL":        "debug",
		"SHUTDOWN_TIMEOUT": "10s",
	}
	t.Cleanup(s.cleanup)
	// Every call needs an API key: make an admin key the way an operator bootstraps one.
	keys := exec.Command(filepath.Join(s.bin, "producer"), "keys", "create", "e2e-admin", "--role", "admin")
	keys.Env = append(os.Environ(), "DATABASE_URL="+s.db.URL)
	out, err := keys.Output()
	if err != nil {
		t.Fatalf("producer keys create: %v %s", err, stderrOf(err))
	}
	s.adminKey = strings.TrimSpace(string(out))
	return s
}

func stderrOf(err error) string {
	if ee, ok := err.(*exec.ExitError); ok {
		return string(ee.Stderr)
	}
	return ""
}

// bearerKey sends an API key with every call.
type bearerKey string

func (k bearerKey) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(k)}, nil
}

func (bearerKey) RequireTransportSecurity() bool { return false }

// proc is one running service.
type proc struct {
	name    string
	cmd     *exec.Cmd
	log     string
	metrics string
	done    chan struct{}
	err     error
}

// start runs a service with the stack's environment plus env and waits until it is ready
// (its /readyz answers 200).
func (s *stack) start(name string, env map[string]string) *proc {
	s.t.Helper()
	return s.startUntil(name, env, "/readyz")
}

// startUntil runs a service with the stack's environment plus env and waits until its
// health endpoint path (/livez or /readyz) answers 200.
func (s *stack) startUntil(name string, env map[string]string, path string) *proc {
	s.t.Helper()
	p := &proc{name: name, done: make(chan struct{})}
	vars := map[string]string{}
	for k, v := range s.env {
		vars[k] = v
	}
	health := ""
	switch name {
	case "fcm-emulator":
		addr := freeAddr(s.t)
		vars["FCM_EMULATOR_ADDR"] = addr
		s.emulatorURL = "http://" + addr
		health = s.emulatorURL + path
	default:
		p.metrics = freeAddr(s.t)
		vars["METRICS_ADDR"] = p.metrics
		health = "http://" + p.metrics + path
		if s.emulatorURL != "" {
			vars["FCM_ENDPOINT"] = s.emulatorURL + "/v1"
		}
	}
	if name == "producer" {
		if s.grpcAddr == "" {
			s.grpcAddr = freeAddr(s.t)
		}
		vars["GRPC_ADDR"] = s.grpcAddr
	}
	for k, v := range env {
		vars[k] = v
	}
	p.cmd = exec.Command(filepath.Join(s.bin, name))
	p.cmd.Env = os.Environ()
	for k, v := range vars {
		p.cmd.Env = append(p.cmd.Env, k+"="+v)
	}
	logFile, err := os.CreateTemp(s.t.TempDir(), name+"-*.log")
	if err != nil {
		s.t.Fatal(err)
	}
	p.log = logFile.Name()
	p.cmd.Stdout, p.cmd.Stderr = logFile, logFile
	if err := p.cmd.Start(); err != nil {
		s.t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		logFile.Close()
		close(p.done)
	}()
	s.mu.Lock()
	s.procs = append(s.procs, p)
	s.mu.Unlock()

	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(health)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		select {
		case <-p.done:
			s.t.Fatalf("%s exited at start (%v):\n%s", name, p.err, p.tail(40))
		default:
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("%s: %s not 200 after 30s:\n%s", name, path, p.tail(40))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// kill sends SIGKILL: no chance to clean up.
func (p *proc) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

func (p *proc) tail(n int) string {
	b, _ := os.ReadFile(p.log)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func (s *stack) cleanup() {
	s.mu.Lock()
	procs := s.procs
	s.mu.Unlock()
	for _, p := range procs {
		select {
		case <-p.done:
			continue
		default:
		}
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(15 * time.Second):
			p.kill()
		}
	}
	if s.t.Failed() {
		for _, p := range procs {
			s.t.Logf("last lines of %s:\n%s", p.name, p.tail(30))
		}
	}
	if s.mgmtURL != "" {
		s.deleteTopology()
	}
}

// deleteTopology removes the test's queues and exchange through the management API.
func (s *stack) deleteTopology() {
	var queues []struct{ Name string }
	if err := s.mgmt(http.MethodGet, "/api/queues/%2F?columns=name", &queues); err != nil {
		s.t.Logf("list queues: %v", err)
		return
	}
	for _, q := range queues {
		if strings.HasPrefix(q.Name, s.topology+".") {
			_ = s.mgmt(http.MethodDelete, "/api/queues/%2F/"+url.PathEscape(q.Name), nil)
		}
	}
	_ = s.mgmt(http.MethodDelete, "/api/exchanges/%2F/"+url.PathEscape(s.topology), nil)
	_ = s.mgmt(http.MethodDelete, "/api/exchanges/%2F/"+url.PathEscape(s.topology+".events"), nil)
}

func (s *stack) mgmt(method, path string, out any) error {
	u, err := url.Parse(s.mgmtURL)
	if err != nil {
		return err
	}
	req, err := http.NewRequest(method, strings.TrimSuffix(u.Scheme+"://"+u.Host, "/")+path, nil)
	if err != nil {
		return err
	}
	pass, _ := u.User.Password()
	req.SetBasicAuth(u.User.Username(), pass)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 && resp.StatusCode != http.StatusNotFound {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("%s %s: %s %s", method, path, resp.Status, b)
	}
	if out != nil {
		return json.NewDecoder(resp.Body).Decode(out)
	}
	return nil
}

// clients returns gRPC clients of the stack's producer, authenticated with the admin key.
func (s *stack) clients() (notifyv1.NotificationServiceClient, notifyv1.DeviceServiceClient, notifyv1.AdminServiceClient) {
	s.t.Helper()
	conn, err := grpc.NewClient(s.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(bearerKey(s.adminKey)))
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() { conn.Close() })
	return notifyv1.NewNotificationServiceClient(conn), notifyv1.NewDeviceServiceClient(conn), notifyv1.NewAdminServiceClient(conn)
}

// emulatorStats reads what the emulator received, per token too when perToken is set.
func (s *stack) emulatorStats(perToken bool) fcmemu.Stats {
	s.t.Helper()
	q := "?tokens=false"
	if perToken {
		q = ""
	}
	resp, err := http.Get(s.emulatorURL + "/emulator/stats" + q)
	if err != nil {
		s.t.Fatalf("emulator stats: %v", err)
	}
	defer resp.Body.Close()
	var st fcmemu.Stats
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		s.t.Fatalf("decode emulator stats: %v", err)
	}
	return st
}

// emulatorConfig changes the emulator's runtime settings (fcmemu's PUT /emulator/config).
func (s *stack) emulatorConfig(settings map[string]any) {
	s.t.Helper()
	b, _ := json.Marshal(settings)
	req, _ := http.NewRequest(http.MethodPut, s.emulatorURL+"/emulator/config", bytes.NewReader(b))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatalf("emulator config: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		s.t.Fatalf("emulator config %s: %s", b, resp.Status)
	}
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// handedOut holds every address freeAddr returned in this process: the kernel may give a
// port just closed to the next listen on :0, and two services of one stack (a producer's
// gRPC and metrics ports) must never be handed the same one.
var handedOut = struct {
	sync.Mutex
	addrs map[string]bool
}{addrs: map[string]bool{}}

// freeAddr returns a loopback address nothing listens on now and that no other freeAddr
// call of this test process returned.
func freeAddr(t *testing.T) string {
	t.Helper()
	handedOut.Lock()
	defer handedOut.Unlock()
	for {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		if !handedOut.addrs[addr] {
			handedOut.addrs[addr] = true
			return addr
		}
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// urlHost returns host:port of an AMQP URL.
func urlHost(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", err
	}
	port := u.Port()
	if port == "" {
		port = "5672"
	}
	return net.JoinHostPort(u.Hostname(), port), nil
}

// replaceHost returns raw with its host:port replaced.
func replaceHost(raw, hostPort string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return raw
	}
	u.Host = hostPort
	return u.String()
}

// notStatusEvent selects the outbox rows that are not status events: a test counting what a
// Publish or a replay wrote counts its send tasks, while status events of any notification
// (pkg/schema/events.go) may be written at any moment.
const notStatusEvent = "message_type <> '" + schema.StatusEventType + "'"
