package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"notify/pkg/tlstest"
)

var (
	notifyctlOnce sync.Once
	notifyctlErr  error
)

// notifyctl builds the notifyctl binary once per test process, next to the services.
func notifyctl(t *testing.T, bin string) string {
	t.Helper()
	path := filepath.Join(bin, "notifyctl")
	notifyctlOnce.Do(func() {
		_, file, _, _ := runtime.Caller(0)
		cmd := exec.Command("go", "build", "-o", path, ".")
		cmd.Dir = filepath.Join(filepath.Dir(file), "..", "services", "notifyctl")
		if out, err := cmd.CombinedOutput(); err != nil {
			notifyctlErr = fmt.Errorf("build notifyctl: %v\n%s", err, out)
		}
	})
	if notifyctlErr != nil {
		t.Fatal(notifyctlErr)
	}
	return path
}

// ctlResult is one notifyctl run.
type ctlResult struct {
	code           int
	stdout, stderr string
}

// ctl runs notifyctl against the stack's producer with key as NOTIFY_API_KEY.
func (s *stack) ctl(key string, args ...string) ctlResult {
	s.t.Helper()
	return runCtl(s.t, notifyctl(s.t, s.bin), []string{"NOTIFY_ADDR=" + s.grpcAddr, "NOTIFY_API_KEY=" + key}, args...)
}

// runCtl runs the notifyctl binary with env added to the test's environment.
func runCtl(t *testing.T, path string, env []string, args ...string) ctlResult {
	t.Helper()
	cmd := exec.Command(path, args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	r := ctlResult{stdout: out.String(), stderr: errOut.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("notifyctl %q: %v", args, err)
	}
	return r
}

// mustCtl runs notifyctl and fails the test unless it exits with want.
func (s *stack) mustCtl(want int, key string, args ...string) ctlResult {
	s.t.Helper()
	r := s.ctl(key, args...)
	if r.code != want {
		s.t.Fatalf("notifyctl %s: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.code, want, r.stdout, r.stderr)
	}
	return r
}

// jsonOf decodes notifyctl's --json output into a generic map.
func jsonOf(t *testing.T, r ctlResult) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &m); err != nil {
		t.Fatalf("notifyctl --json printed no JSON object: %v\n%s", err, r.stdout)
	}
	return m
}

// hasRow reports whether a table has a row of exactly these cells.
func hasRow(table string, cells ...string) bool {
	for _, line := range strings.Split(table, "\n") {
		if strings.Join(strings.Fields(line), " ") == strings.Join(cells, " ") {
			return true
		}
	}
	return false
}

func TestNotifyctl(t *testing.T) {
	s := newStack(t)
	s.start("fcm-emulator", nil)
	s.start("producer", nil)
	s.start("sender", map[string]string{"RETRY_MAX_ATTEMPTS": "1"})
	s.start("deadletter", nil)
	admin := s.adminKey

	// Keys: a publisher key for the domain-service side of the demo.
	pub := strings.TrimSpace(s.mustCtl(0, admin, "keys", "create", "cli-publisher", "--role", "publisher").stdout)
	if !strings.HasPrefix(pub, "nfy_") || strings.Contains(pub, " ") {
		t.Fatalf("keys create printed %q, want only the secret", pub)
	}
	keys := s.mustCtl(0, admin, "keys", "list").stdout
	if !strings.Contains(keys, "cli-publisher") || !strings.Contains(keys, "e2e-admin") || strings.Contains(keys, pub) {
		t.Errorf("keys list:\n%s", keys)
	}
	if bare := s.mustCtl(0, admin, "keys", "list", "--no-headers").stdout; strings.Count(bare, "\n") != 2 || strings.Contains(bare, "NAME") {
		t.Errorf("keys list --no-headers, want only the two rows:\n%s", bare)
	}
	listed := jsonOf(t, s.mustCtl(0, admin, "keys", "list", "--json"))
	if n := len(listed["keys"].([]any)); n != 2 {
		t.Errorf("keys list --json: %d keys, want 2", n)
	}

	// Devices and publish with the publisher key; the third token fails once.
	for i, tok := range []string{"ctl-ok-1", "ctl-ok-2", "flaky1-ctl-3"} {
		s.mustCtl(0, pub, "devices", "register", "--user", "zoe", "--device", fmt.Sprintf("zoe-%d", i), "--token", tok)
	}
	if out := s.mustCtl(0, pub, "devices", "check", "--user", "zoe", "--device", "zoe-0").stdout; !strings.Contains(out, "is registered") {
		t.Errorf("devices check: %s", out)
	}
	id := strings.TrimSpace(s.mustCtl(0, pub, "publish", "--user", "zoe", "--type", "e2e.ctl", "--title", "Hi",
		"--idempotency-key", "ctl-1").stdout)
	if again := s.mustCtl(0, pub, "publish", "--user", "zoe", "--type", "e2e.ctl", "--title", "Hi",
		"--idempotency-key", "ctl-1").stdout; !strings.Contains(again, id) || !strings.Contains(again, "duplicate") {
		t.Errorf("publish with a used idempotency key: %q, want %s (duplicate)", again, id)
	}

	// get waits for the send; the publisher key may not read the admin API.
	got := s.mustCtl(0, admin, "get", id, "--wait", "30s").stdout
	if !strings.Contains(got, "status failed") || !strings.Contains(got, "flaky1-ctl-3") || !strings.Contains(got, "caller cli-publisher") {
		t.Errorf("get:\n%s", got)
	}
	notification := jsonOf(t, s.mustCtl(0, admin, "--json", "get", id))["notification"].(map[string]any)
	counts := notification["counts"].(map[string]any)
	if notification["status"] != "NOTIFICATION_STATUS_FAILED" || counts["total"] != 3.0 || counts["delivered"] != 2.0 || counts["failed"] != 1.0 {
		t.Errorf("get --json: status %v, counts %v; want FAILED, counts as numbers: total 3, delivered 2, failed 1", notification["status"], counts)
	}
	var asYAML struct {
		Notification struct {
			Status string `yaml:"status"`
			Counts struct {
				Total int `yaml:"total"`
			} `yaml:"counts"`
			CreateTime time.Time `yaml:"createTime"`
		} `yaml:"notification"`
	}
	if out := s.mustCtl(0, admin, "get", id, "-o", "yaml").stdout; yaml.Unmarshal([]byte(out), &asYAML) != nil ||
		asYAML.Notification.Status != "NOTIFICATION_STATUS_FAILED" || asYAML.Notification.Counts.Total != 3 ||
		time.Since(asYAML.Notification.CreateTime) > time.Hour {
		t.Errorf("get -o yaml:\n%s", out)
	}
	s.mustCtl(4, pub, "get", id)
	s.mustCtl(4, "", "list")
	s.mustCtl(4, "nfy_not-a-real-key", "list")
	s.mustCtl(3, admin, "get", "01890a5d-ac96-774b-bcce-b302099a8057")
	s.mustCtl(2, admin, "list", "--status", "lost")
	s.mustCtl(2, admin, "replay")
	s.mustCtl(2, admin, "replay", id, "--dead")
	if help := s.mustCtl(0, "", "help").stdout; !strings.Contains(help, "Exit codes") || !strings.Contains(help, "replay --dead") {
		t.Errorf("help does not document exit codes and replay:\n%s", help)
	}

	// list and dead list.
	if out := s.mustCtl(0, admin, "list", "--status", "failed", "--since", "1h").stdout; !strings.Contains(out, id) {
		t.Errorf("list --status failed --since 1h does not show %s:\n%s", id, out)
	}
	if out := s.mustCtl(0, admin, "list", "--status", "delivered", "--json").stdout; strings.Contains(out, id) {
		t.Errorf("list --status delivered shows the failed notification:\n%s", out)
	}
	if out := s.mustCtl(0, admin, "list", "--until", "1h").stdout; strings.Contains(out, id) {
		t.Errorf("list --until 1h (ago) shows a new notification:\n%s", out)
	}
	waitFor(t, 30*time.Second, "the dead letter", func() bool {
		return strings.Contains(s.mustCtl(0, admin, "dead", "list", "--reason", "retries_exhausted", "--since", "1h").stdout, id)
	})
	deadJSON := jsonOf(t, s.mustCtl(0, admin, "dead", "list", "--unreplayed", "-o", "json"))
	if n := len(deadJSON["deadLetters"].([]any)); n != 1 {
		t.Errorf("dead list --unreplayed --json: %d dead letters, want 1", n)
	}

	// A dry run changes nothing; with unknown ids it reports them, shows progress per
	// batch and exits 3.
	unknown1, unknown2 := "01890a5d-ac96-774b-bcce-000000000001", "01890a5d-ac96-774b-bcce-000000000002"
	dry := s.mustCtl(3, admin, "replay", id, unknown1, unknown2, "--dry-run", "--batch", "1")
	if !hasRow(dry.stdout, id, "replayed", "1") || !hasRow(dry.stdout, unknown2, "not_found", "0") || !strings.Contains(dry.stdout, "dry run") {
		t.Errorf("replay --dry-run:\n%s", dry.stdout)
	}
	if !strings.Contains(dry.stderr, "replay: 1/3 notifications") || !strings.Contains(dry.stderr, "replay: 3/3 notifications") {
		t.Errorf("replay progress on stderr:\n%s", dry.stderr)
	}
	after := jsonOf(t, s.mustCtl(0, admin, "--json", "get", id))["notification"].(map[string]any)
	if after["status"] != "NOTIFICATION_STATUS_FAILED" || after["replayCount"] != 0.0 {
		t.Errorf("after the dry run: status %v, replay count %v; want FAILED, never replayed", after["status"], after["replayCount"])
	}

	// Replay by dead-letter filter: the flaky token is delivered now, the others not again.
	res := jsonOf(t, s.mustCtl(0, admin, "--json", "replay", "--dead", "--reason", "retries_exhausted", "--since", "1h"))
	results := res["results"].([]any)
	if len(results) != 1 || results[0].(map[string]any)["notificationId"] != id ||
		results[0].(map[string]any)["outcome"] != "REPLAY_OUTCOME_REPLAYED" || results[0].(map[string]any)["tokenCount"] != 1.0 {
		t.Fatalf("replay --dead --json: %v", res)
	}
	if out := s.mustCtl(0, admin, "get", id, "--wait", "30s").stdout; !strings.Contains(out, "status delivered") {
		t.Errorf("get after the replay:\n%s", out)
	}
	st := s.emulatorStats(true)
	for tok, want := range map[string]int64{"ctl-ok-1": 1, "ctl-ok-2": 1, "flaky1-ctl-3": 2} {
		if got := st.Tokens[tok].Received; got != want {
			t.Errorf("emulator received %s %d times, want %d", tok, got, want)
		}
	}
	if out := s.mustCtl(0, admin, "replay", id).stdout; !strings.Contains(out, "skipped_delivered") {
		t.Errorf("second replay:\n%s", out)
	}
	if out := s.mustCtl(0, admin, "replay", "--dead", "--reason", "retries_exhausted").stdout; !strings.Contains(out, "0 notifications") {
		t.Errorf("replay --dead after everything was replayed:\n%s", out)
	}
	replayedDead := s.mustCtl(0, admin, "dead", "list", "--replayed").stdout
	if !strings.Contains(replayedDead, id) || !strings.Contains(replayedDead, "e2e-admin") {
		t.Errorf("dead list --replayed:\n%s", replayedDead)
	}

	// Revocation.
	s.mustCtl(0, admin, "keys", "revoke", "cli-publisher")
	s.mustCtl(3, admin, "keys", "revoke", "cli-publisher")
	s.mustCtl(4, pub, "publish", "--user", "zoe", "--title", "refused")
	if out := s.mustCtl(0, admin, "keys", "list", "--all").stdout; !strings.Contains(out, "cli-publisher") {
		t.Errorf("keys list --all does not show the revoked key:\n%s", out)
	}
}

// The binary's command line: help, version, completion and an unreachable producer need no stack.
func TestNotifyctlCommandLine(t *testing.T) {
	path := notifyctl(t, binaries(t))
	deadAddr := freeAddr(t) // nothing listens there
	env := []string{"NOTIFY_ADDR=" + deadAddr, "NOTIFY_API_KEY=nfy_x"}

	help := runCtl(t, path, env, "publish", "--help")
	if help.code != 0 {
		t.Fatalf("publish --help: exit %d\n%s", help.code, help.stderr)
	}
	for _, flag := range []string{"--user", "--token", "--all", "--type", "--title", "--body", "--image", "--data",
		"--idempotency-key", "--ttl", "--priority", "--collapse-key", "--addr", "--api-key", "--ca-file", "-o, --output", "Exit codes"} {
		if !strings.Contains(help.stdout, flag) {
			t.Errorf("publish --help does not list %s:\n%s", flag, help.stdout)
		}
	}
	if r := runCtl(t, path, env, "--version"); r.code != 0 || !strings.HasPrefix(r.stdout, "notifyctl ") || !strings.Contains(r.stdout, runtime.Version()) {
		t.Errorf("--version: exit %d, %q; want the version with %s", r.code, r.stdout, runtime.Version())
	}
	if r := runCtl(t, path, env, "completion", "bash"); r.code != 0 || !strings.Contains(r.stdout, "__start_notifyctl") {
		t.Errorf("completion bash: exit %d, %d bytes", r.code, len(r.stdout))
	}
	if r := runCtl(t, path, env, "lsit"); r.code != 2 || !strings.Contains(r.stderr, "list") {
		t.Errorf("a typo: exit %d, stderr %q; want 2 and a suggestion", r.code, r.stderr)
	}
	r := runCtl(t, path, env, "list", "--json")
	if want := "cannot reach notify at " + deadAddr; r.code != 1 || !strings.Contains(r.stderr, want) || !strings.Contains(r.stderr, "NOTIFY_ADDR or --addr") {
		t.Errorf("list against a closed port: exit %d, stderr %q; want 1 and %q, naming NOTIFY_ADDR", r.code, r.stderr, want)
	}
}

// notifyctl against the real producer over mutual TLS: the CA and a client certificate
// from the environment get through; a client without a certificate, one that does not
// trust the producer's CA, and a plaintext one are refused with what to set.
func TestNotifyctlOverTLS(t *testing.T) {
	s := newStack(t)
	dir := t.TempDir()
	serverCA, clientCA := tlstest.NewCA(t, "notify"), tlstest.NewCA(t, "operators")
	certFile, keyFile := serverCA.Server(t).Write(t, dir, "producer")
	s.start("producer", map[string]string{
		"GRPC_TLS_CERT_FILE":      certFile,
		"GRPC_TLS_KEY_FILE":       keyFile,
		"GRPC_TLS_CLIENT_CA_FILE": clientCA.WriteCA(t, dir, "operators-ca.pem"),
	})
	caFile := serverCA.WriteCA(t, dir, "notify-ca.pem")
	opsCert, opsKey := clientCA.Client(t, "ops").Write(t, dir, "ops")
	path := notifyctl(t, s.bin)
	base := []string{"NOTIFY_ADDR=" + s.grpcAddr, "NOTIFY_API_KEY=" + s.adminKey}
	mtls := append(slices.Clone(base), "NOTIFY_CA_FILE="+caFile, "NOTIFY_CERT_FILE="+opsCert, "NOTIFY_KEY_FILE="+opsKey)

	r := runCtl(t, path, mtls, "publish", "--token", "tls-token", "--title", "over TLS", "--idempotency-key", "tls-1")
	id := strings.TrimSpace(r.stdout)
	if r.code != 0 || id == "" {
		t.Fatalf("publish over mTLS: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r := runCtl(t, path, mtls, "get", id, "-o", "json"); r.code != 0 || !strings.Contains(r.stdout, id) {
		t.Errorf("get over mTLS: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	// The same with flags instead of the environment.
	if r := runCtl(t, path, base, "keys", "list", "--ca-file", caFile, "--cert-file", opsCert, "--key-file", opsKey); r.code != 0 ||
		!strings.Contains(r.stdout, "e2e-admin") {
		t.Errorf("keys list over mTLS with flags: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}

	refused := []struct {
		name   string
		args   []string
		causes []string // any one of them
	}{
		// In TLS 1.3 the server checks the client's certificate after the client has
		// finished its handshake: the client usually reads the server's "certificate
		// required" alert, but on a busy machine its first write can fail first. The hint
		// is the same either way.
		{"no client certificate", []string{"--ca-file", caFile}, []string{"if notify requires a client certificate (mTLS), give --cert-file"}},
		{"the wrong CA", []string{"--ca-file", clientCA.WriteCA(t, dir, "wrong-ca.pem"), "--cert-file", opsCert, "--key-file", opsKey}, []string{"certificate signed by unknown authority"}},
		{"plaintext", nil, []string{"if notify serves TLS, give --ca-file (NOTIFY_CA_FILE)"}},
	}
	for _, tt := range refused {
		r := runCtl(t, path, base, append([]string{"keys", "list"}, tt.args...)...)
		hasCause := slices.ContainsFunc(tt.causes, func(c string) bool { return strings.Contains(r.stderr, c) })
		if want := "cannot reach notify at " + s.grpcAddr; r.code != 1 || !strings.Contains(r.stderr, want) || !hasCause {
			t.Errorf("%s: exit %d, stderr %q; want 1, %q and one of %q", tt.name, r.code, r.stderr, want, tt.causes)
		}
	}
}
