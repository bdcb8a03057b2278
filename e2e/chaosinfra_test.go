//go:build chaos

package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"notify/pkg/pgtest"
	"notify/pkg/testenv"
)

// The chaos suite kills and restarts its broker and its database, so it never uses the
// shared ones (other tests and a developer's `make run` rely on them): it starts a RabbitMQ
// node and a PostgreSQL cluster of its own, from the same Debian packages, on free ports,
// and removes both at the end.

// chaosPrefix names everything the suite creates outside its temporary directory (the
// PostgreSQL cluster, the RabbitMQ node), followed by the test process id, so a run can
// remove what a killed earlier run left behind.
const chaosPrefix = "chaos"

// requireChaosTools skips (fails in CI) unless this machine can run a second RabbitMQ node
// and PostgreSQL cluster: root, the rabbitmq-server and postgresql-common packages.
func requireChaosTools(t *testing.T) {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root (pg_createcluster and a second RabbitMQ node)")
	}
	for _, tool := range []string{rabbitmqServer, "pg_createcluster", "pg_ctlcluster", "pg_dropcluster", "pg_lsclusters"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) == 0 {
		return
	}
	msg := "chaos suite needs " + strings.Join(missing, ", ") + " (Debian packages rabbitmq-server and postgresql; scripts/devenv.sh installs them)"
	if testenv.InCI() {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// rabbitmqServer is the package's own start script; /usr/sbin/rabbitmq-server would switch
// to the rabbitmq user and the system node's directories.
const rabbitmqServer = "/usr/lib/rabbitmq/bin/rabbitmq-server"

// rabbitNode is a RabbitMQ node of the suite's own: its own node name, ports, data and log
// directories, no plugins.
type rabbitNode struct {
	t    *testing.T
	dir  string
	name string
	addr string // AMQP listener, 127.0.0.1:port
	env  []string

	cmd  *exec.Cmd
	done chan struct{}
}

// newRabbitNode prepares a node (directories, ports, name) that start runs; it is removed
// when the test ends.
func newRabbitNode(t *testing.T) *rabbitNode {
	t.Helper()
	dir, err := os.MkdirTemp("", "notify-chaos-rabbit-")
	if err != nil {
		t.Fatal(err)
	}
	// Erlang refuses a cookie others can read; mkdir -p for the data and log bases.
	if err := os.WriteFile(filepath.Join(dir, "enabled_plugins"), []byte("[].\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "rabbitmq.conf"), []byte("log.console = true\nlog.file = false\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	_, port, _ := net.SplitHostPort(addr)
	_, distPort, _ := net.SplitHostPort(freeAddr(t))
	r := &rabbitNode{
		t: t, dir: dir, addr: addr,
		name: fmt.Sprintf("%s-%d-%s@localhost", chaosPrefix, os.Getpid(), randomHex(3)),
	}
	r.env = append(os.Environ(),
		"HOME="+dir, // the node's and rabbitmqctl's Erlang cookie
		"RABBITMQ_NODENAME="+r.name,
		"RABBITMQ_NODE_IP_ADDRESS=127.0.0.1",
		"RABBITMQ_NODE_PORT="+port,
		"RABBITMQ_DIST_PORT="+distPort,
		"RABBITMQ_MNESIA_BASE="+filepath.Join(dir, "mnesia"),
		"RABBITMQ_LOG_BASE="+filepath.Join(dir, "log"),
		"RABBITMQ_ENABLED_PLUGINS_FILE="+filepath.Join(dir, "enabled_plugins"),
		"RABBITMQ_CONFIG_FILE="+filepath.Join(dir, "rabbitmq.conf"),
		"RABBITMQ_ADVANCED_CONFIG_FILE="+filepath.Join(dir, "advanced.config"),
		"RABBITMQ_CONF_ENV_FILE="+filepath.Join(dir, "rabbitmq-env.conf"),
	)
	t.Cleanup(func() {
		r.stop(false)
		_ = os.RemoveAll(dir)
	})
	return r
}

// url is the node's AMQP URL.
func (r *rabbitNode) url() string { return "amqp://guest:guest@" + r.addr + "/" }

// start runs the node and waits until it accepts AMQP connections.
func (r *rabbitNode) start() error {
	log, err := os.OpenFile(filepath.Join(r.dir, "node.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	r.cmd = exec.Command(rabbitmqServer)
	r.cmd.Dir = r.dir
	r.cmd.Env = r.env
	r.cmd.Stdout, r.cmd.Stderr = log, log
	// Its own process group: a hard kill takes the start script, the VM and its helpers.
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := r.cmd.Start(); err != nil {
		log.Close()
		return fmt.Errorf("start RabbitMQ node %s: %w", r.name, err)
	}
	done := make(chan struct{})
	r.done = done
	cmd := r.cmd
	go func() { _ = cmd.Wait(); log.Close(); close(done) }()
	// The node boots in seconds on an idle machine and in minutes on one busy compiling
	// every module with -race (seen: over 2 minutes at a load average of 32).
	const bootTimeout = 5 * time.Minute
	deadline := time.Now().Add(bootTimeout)
	for {
		if amqpAnswers(r.addr) {
			return nil
		}
		select {
		case <-done:
			return fmt.Errorf("RabbitMQ node %s exited at start:\n%s", r.name, tailFile(filepath.Join(r.dir, "node.log"), 30))
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("RabbitMQ node %s not accepting AMQP at %s after %s:\n%s", r.name, r.addr, bootTimeout, tailFile(filepath.Join(r.dir, "node.log"), 30))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// amqpAnswers reports whether addr answers the AMQP protocol header with a connection.start
// (a port that is merely open may still be booting).
func amqpAnswers(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte("AMQP\x00\x00\x09\x01")); err != nil {
		return false
	}
	b := make([]byte, 8)
	n, _ := c.Read(b)
	return n > 0 && b[0] == 1 // a method frame
}

// stop ends the node: gracefully (SIGTERM, the node closes its queues) or hard (SIGKILL of
// the whole process group: what a power cut or OOM kill does). It waits until it is gone.
func (r *rabbitNode) stop(graceful bool) {
	if r.cmd == nil || r.cmd.Process == nil {
		return
	}
	select {
	case <-r.done:
		return
	default:
	}
	sig := syscall.SIGKILL
	if graceful {
		sig = syscall.SIGTERM
	}
	_ = syscall.Kill(-r.cmd.Process.Pid, sig)
	select {
	case <-r.done:
	case <-time.After(90 * time.Second):
		_ = syscall.Kill(-r.cmd.Process.Pid, syscall.SIGKILL)
		<-r.done
	}
	// The VM's helpers (erl_child_setup, inet_gethost) may outlive the script by a moment;
	// the next start must not find the node name still registered.
	_ = syscall.Kill(-r.cmd.Process.Pid, syscall.SIGKILL)
	for i := 0; i < 50 && processGroupAlive(r.cmd.Process.Pid); i++ {
		time.Sleep(100 * time.Millisecond)
	}
}

func processGroupAlive(pgid int) bool { return syscall.Kill(-pgid, 0) == nil }

// pgCluster is a PostgreSQL cluster of the suite's own (pg_createcluster), with a notify
// role and database.
type pgCluster struct {
	t       *testing.T
	version string
	name    string
	port    string
	url     string
}

func startPGCluster(t *testing.T) *pgCluster {
	t.Helper()
	version, err := newestPostgres()
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(freeAddr(t))
	c := &pgCluster{
		t: t, version: version, port: port,
		name: fmt.Sprintf("%s%dx%s", chaosPrefix, os.Getpid(), randomHex(3)),
	}
	c.url = "postgres://notify:notify@127.0.0.1:" + port + "/notify?sslmode=disable"
	t.Cleanup(c.drop)
	if out, err := c.run("pg_createcluster", c.version, c.name, "-p", c.port, "--start",
		"--", "--no-sync"); err != nil {
		t.Fatalf("pg_createcluster %s %s: %v\n%s", c.version, c.name, err, out)
	}
	for _, stmt := range []string{
		"CREATE ROLE notify LOGIN SUPERUSER PASSWORD 'notify'",
		"CREATE DATABASE notify OWNER notify", // not in one -c with the above: no transaction block
	} {
		if out, err := c.run("su", "postgres", "-c", "psql -p "+c.port+" -v ON_ERROR_STOP=1 -qAt -c \""+stmt+"\""); err != nil {
			t.Fatalf("psql %s: %v\n%s", stmt, err, out)
		}
	}
	return c
}

func (c *pgCluster) run(name string, args ...string) ([]byte, error) {
	cmd := exec.Command(name, args...)
	cmd.Dir = "/" // su postgres must not start in a directory it cannot read
	return cmd.CombinedOutput()
}

// restart restarts the cluster (fast mode: open sessions are disconnected, what was
// committed is kept).
func (c *pgCluster) restart() error {
	if out, err := c.run("pg_ctlcluster", c.version, c.name, "restart", "-m", "fast"); err != nil {
		return fmt.Errorf("pg_ctlcluster %s %s restart: %v\n%s", c.version, c.name, err, out)
	}
	return nil
}

// drop stops and removes the cluster, data and configuration.
func (c *pgCluster) drop() {
	if out, err := c.run("pg_dropcluster", c.version, c.name, "--stop"); err != nil {
		c.t.Errorf("pg_dropcluster %s %s: %v\n%s", c.version, c.name, err, out)
	}
}

// pool opens a pool on the cluster's notify database for the test's own queries.
func (c *pgCluster) db(ctx context.Context) (*pgtest.DB, error) {
	pool, err := pgxpool.New(ctx, c.url)
	if err != nil {
		return nil, err
	}
	c.t.Cleanup(pool.Close)
	return &pgtest.DB{URL: c.url, Pool: pool}, nil
}

func newestPostgres() (string, error) {
	entries, err := os.ReadDir("/usr/lib/postgresql")
	if err != nil {
		return "", fmt.Errorf("find PostgreSQL: %w", err)
	}
	var versions []int
	for _, e := range entries {
		if v, err := strconv.Atoi(e.Name()); err == nil {
			versions = append(versions, v)
		}
	}
	if len(versions) == 0 {
		return "", fmt.Errorf("no PostgreSQL server under /usr/lib/postgresql")
	}
	sort.Ints(versions)
	return strconv.Itoa(versions[len(versions)-1]), nil
}

// removeLeftovers drops the PostgreSQL clusters and kills the RabbitMQ nodes of earlier
// chaos runs whose test process is gone (killed, or stopped by go test's timeout before its
// cleanup ran). Those of a run still going are left alone.
func removeLeftovers(t *testing.T) {
	t.Helper()
	out, err := exec.Command("pg_lsclusters", "-h").Output()
	if err == nil {
		for _, line := range strings.Split(string(out), "\n") {
			f := strings.Fields(line)
			if len(f) < 2 {
				continue
			}
			if pid, ok := ownerPID(f[1], chaosPrefix, "x"); ok && !processAlive(pid) {
				t.Logf("removing PostgreSQL cluster %s %s of a chaos run that is gone", f[0], f[1])
				c := &pgCluster{t: t, version: f[0], name: f[1]}
				c.drop()
			}
		}
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		for i, a := range args {
			if (a != "-sname" && a != "-name") || i+1 >= len(args) {
				continue
			}
			if pid, ok := ownerPID(args[i+1], chaosPrefix+"-", "-"); ok && !processAlive(pid) {
				if vm, err := strconv.Atoi(strings.Split(p, "/")[2]); err == nil {
					t.Logf("killing RabbitMQ node %s of a chaos run that is gone", args[i+1])
					_ = syscall.Kill(vm, syscall.SIGKILL)
				}
			}
		}
	}
}

// ownerPID reads the test process id out of a name made as prefix<pid>sep….
func ownerPID(name, prefix, sep string) (int, bool) {
	rest, ok := strings.CutPrefix(name, prefix)
	if !ok {
		return 0, false
	}
	num, _, ok := strings.Cut(rest, sep)
	if !ok {
		return 0, false
	}
	pid, err := strconv.Atoi(num)
	return pid, err == nil
}

func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || err == syscall.EPERM
}

func tailFile(path string, n int) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
