package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/x509"
	"debug/buildinfo"
	"debug/elf"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"notify/pkg/pgtest"
	"notify/pkg/rabbit"
	"notify/pkg/rabbit/rabbittest"
	"notify/pkg/testenv"
)

// TestProducerImage builds the producer's image the way `make images` does, reads it back
// from the OCI layout and the docker tarball, and checks what it holds: exactly the binary
// (static, built from the workspace's module versions), a CA bundle, the non-root user's
// passwd and group, a home and /tmp. As root it then runs the image's entrypoint from the
// unpacked root filesystem (chroot, the image's user) against the test's PostgreSQL and
// RabbitMQ until /readyz answers 200, and runs a static probe there that asks crypto/x509
// for the system roots.
func TestProducerImage(t *testing.T) {
	t.Parallel()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	created := time.Date(2026, 11, 30, 3, 0, 0, 0, time.UTC)
	b := build{Root: root, Version: "v0.0.0-test", Commit: "0123456789abcdef", Source: "https://example.com/notify",
		Created: created, Arch: runtime.GOARCH}
	tmp := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	bin := filepath.Join(tmp, "producer")
	if err := b.binary(ctx, "producer", bin); err != nil {
		t.Fatal(err)
	}
	built, err := b.image("producer", bin)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(tmp, "out")
	if err := b.write(built, "producer", out); err != nil {
		t.Fatal(err)
	}
	img := fromLayout(t, filepath.Join(out, "producer.oci"), b.Version)
	checkSameImage(t, img, fromLayout(t, filepath.Join(out, "producer.oci"), "latest"))
	for _, tag := range []string{b.Version, "latest"} {
		ref, err := name.NewTag("notify/producer:" + tag)
		if err != nil {
			t.Fatal(err)
		}
		fromTar, err := tarball.ImageFromPath(filepath.Join(out, "producer.tar"), &ref)
		if err != nil {
			t.Fatalf("docker tarball, %s: %v", ref, err)
		}
		// The tarball has no manifest of its own (docker load makes one): compare the config.
		checkSameConfig(t, img, fromTar)
	}
	again, err := b.image("producer", bin)
	if err != nil {
		t.Fatal(err)
	}
	checkSameImage(t, img, again) // reproducible: same inputs, same digest

	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	wantLabels := map[string]string{
		labelSource: b.Source, labelRevision: b.Commit, labelVersion: b.Version,
		labelTitle: "notify producer", labelCreated: "2026-11-30T03:00:00Z",
	}
	for k, v := range wantLabels {
		if got := cf.Config.Labels[k]; got != v {
			t.Errorf("label %s = %q, want %q", k, got, v)
		}
	}
	if cf.Config.User != "65532:65532" || !slices.Equal(cf.Config.Entrypoint, []string{"/usr/local/bin/producer"}) ||
		cf.OS != "linux" || cf.Architecture != runtime.GOARCH {
		t.Errorf("config: user %q, entrypoint %q, platform %s/%s; want 65532:65532, /usr/local/bin/producer, linux/%s",
			cf.Config.User, cf.Config.Entrypoint, cf.OS, cf.Architecture, runtime.GOARCH)
	}

	if got, want := slices.Sorted(maps.Keys(cf.Config.ExposedPorts)), []string{"50051/tcp", "9101/tcp"}; !slices.Equal(got, want) {
		t.Errorf("config: exposed ports %v, want %v", got, want)
	}

	rootfs := filepath.Join(tmp, "rootfs")
	files := unpack(t, img, rootfs)
	want := []string{
		"etc/", "etc/group", "etc/passwd", "etc/ssl/", "etc/ssl/certs/", "etc/ssl/certs/ca-certificates.crt",
		"home/", "home/nonroot/", "tmp/", "usr/", "usr/local/", "usr/local/bin/", "usr/local/bin/producer",
	}
	if !slices.Equal(files, want) {
		t.Errorf("image files:\n%q\nwant exactly:\n%q", files, want)
	}
	if n := countCerts(t, filepath.Join(rootfs, caFile)); n < 100 {
		t.Errorf("%s holds %d certificates, want a real bundle (over 100)", caFile, n)
	}
	passwd, err := os.ReadFile(filepath.Join(rootfs, "etc/passwd"))
	if err != nil || !strings.Contains(string(passwd), "\nnonroot:x:65532:65532:") {
		t.Errorf("/etc/passwd = %q, %v; want the user nonroot with uid 65532", passwd, err)
	}
	checkBinary(t, root, filepath.Join(rootfs, "usr/local/bin/producer"))

	t.Run("runs", func(t *testing.T) {
		requireRoot(t)
		uid, gid := imageUser(t, cf.Config.User)
		if err := os.Chmod(rootfs, 0o755); err != nil { // t.TempDir's 0700 would lock the user out of /
			t.Fatal(err)
		}

		// A probe that reads the system roots as the services do, placed only in the test's
		// copy of the root filesystem. Then the same without the bundle: the probe must notice.
		probe := filepath.Join(tmp, "certprobe")
		goBuild(t, probe, "./testdata/certprobe")
		probeBytes, err := os.ReadFile(probe)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(rootfs, "certprobe"), probeBytes, 0o755); err != nil {
			t.Fatal(err)
		}
		if out, err := chrooted(rootfs, uid, gid, nil, "/certprobe").CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "non-empty" {
			t.Errorf("x509.SystemCertPool() in the image: %s (%v), want non-empty", out, err)
		}
		defer func() {
			// Out of /etc/ssl/certs: crypto/x509 reads every file of that directory too.
			if err := os.Rename(filepath.Join(rootfs, caFile), filepath.Join(rootfs, "ca-bundle.hidden")); err != nil {
				t.Fatal(err)
			}
			out, _ := chrooted(rootfs, uid, gid, nil, "/certprobe").CombinedOutput()
			if strings.TrimSpace(string(out)) != "empty" {
				t.Errorf("certprobe without the CA bundle = %q, want empty: the probe cannot tell", out)
			}
		}()

		runProducer(t, rootfs, uid, gid, cf.Config)
	})
}

// TestExposedPorts checks exposedPorts against the services' own defaults: the ports of the
// loopback addresses in each services/<name>/config.go (a service with no such address, or
// no config.go, exposes none).
func TestExposedPorts(t *testing.T) {
	t.Parallel()
	dirs, err := os.ReadDir("../../services")
	if err != nil {
		t.Fatal(err)
	}
	defaultAddr := regexp.MustCompile(`"127\.0\.0\.1:(\d+)"`)
	for _, d := range dirs {
		service := d.Name()
		var want []string
		src, err := os.ReadFile(filepath.Join("../../services", service, "config.go"))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		for _, m := range defaultAddr.FindAllSubmatch(src, -1) {
			want = append(want, string(m[1])+"/tcp")
		}
		slices.Sort(want)
		got := slices.Sorted(slices.Values(exposedPorts[service]))
		if !slices.Equal(got, want) {
			t.Errorf("%s: exposedPorts %v, want %v (the default addresses in its config.go)", service, got, want)
		}
	}
}

// TestTimeZones checks that what reads TZ in these images carries Go's zone database: the
// images have no /usr/share/zoneinfo, and without either Go ignores TZ and uses UTC.
// notifyctl takes dates as local midnight (--since 2026-12-01).
func TestTimeZones(t *testing.T) {
	t.Parallel()
	cmd := exec.Command("go", "list", "-deps", "./services/notifyctl")
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	if !slices.Contains(strings.Fields(string(out)), "time/tzdata") {
		t.Errorf("notifyctl does not import time/tzdata: TZ is ignored in its image")
	}
}

// runProducer runs the image's entrypoint chrooted into rootfs, with the image's environment
// plus the test's database and broker, until /readyz answers 200; then stops it with SIGTERM.
func runProducer(t *testing.T, rootfs string, uid, gid uint32, cfg v1.Config) {
	t.Helper()
	db := pgtest.New(t)
	amqpURL := testenv.AMQPURL(t)
	topo := rabbittest.Topology(t, amqpURL, "image", rabbit.NewTopology("image", nil))
	metricsAddr, grpcAddr := freeAddr(t), freeAddr(t)
	for grpcAddr == metricsAddr { // the kernel may hand out a just-closed port again
		grpcAddr = freeAddr(t)
	}
	env := slices.Clone(cfg.Env)
	env = append(env, "DATABASE_URL="+db.URL, "AMQP_URL="+amqpURL, "AMQP_TOPOLOGY="+topo.Name,
		"METRICS_ADDR="+metricsAddr, "GRPC_ADDR="+grpcAddr, "LOG_LEVEL=debug")

	var logs bytes.Buffer
	cmd := chrooted(rootfs, uid, gid, env, cfg.Entrypoint...)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s in the image: %v", cfg.Entrypoint, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stopped := false
	defer func() {
		if !stopped {
			_ = cmd.Process.Kill()
			t.Logf("producer killed: %v", <-exited)
		}
		if t.Failed() {
			t.Logf("producer's log:\n%s", logs.String())
		}
	}()

	if got := processUID(t, cmd.Process.Pid); got != uid {
		t.Errorf("the producer runs as uid %d, want %d", got, uid)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		status, body := get("http://" + metricsAddr + "/readyz")
		if status == http.StatusOK {
			t.Logf("/readyz in the image: %s", strings.ReplaceAll(strings.TrimSpace(body), "\n", "; "))
			break
		}
		select {
		case err := <-exited:
			stopped = true
			t.Fatalf("the producer exited (%v) before it was ready", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz = %d %q after a minute, want 200", status, body)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if status, _ := get("http://" + metricsAddr + "/livez"); status != http.StatusOK {
		t.Errorf("/livez = %d, want 200", status)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		stopped = true
		if err != nil {
			t.Errorf("the producer exited with %v after SIGTERM, want 0", err)
		}
	case <-time.After(30 * time.Second):
		t.Error("the producer did not stop within 30s of SIGTERM")
	}
}

// requireRoot skips the test without root (chroot needs it), except in CI, where the test
// must run.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatal("running an image's root filesystem needs root (chroot), and CI is set")
	}
	t.Skip("running an image's root filesystem needs root (chroot)")
}

// chrooted returns a command that runs argv inside rootfs as uid:gid, with only env.
func chrooted(rootfs string, uid, gid uint32, env []string, argv ...string) *exec.Cmd {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = "/"
	cmd.Env = env
	if cmd.Env == nil {
		cmd.Env = []string{}
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Chroot:     rootfs,
		Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: []uint32{}},
		Setpgid:    true,
	}
	return cmd
}

// imageUser parses the config's "uid:gid", which must be numeric and not root.
func imageUser(t *testing.T, user string) (uint32, uint32) {
	t.Helper()
	u, g, ok := strings.Cut(user, ":")
	uid, err1 := strconv.ParseUint(u, 10, 32)
	gid, err2 := strconv.ParseUint(g, 10, 32)
	if !ok || err1 != nil || err2 != nil || uid == 0 {
		t.Fatalf("image user %q, want numeric non-root uid:gid", user)
	}
	return uint32(uid), uint32(gid)
}

// processUID reads the real uid of pid from /proc.
func processUID(t *testing.T, pid int) uint32 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(s.Text(), "Uid:"); ok {
			fields := strings.Fields(rest)
			n, err := strconv.ParseUint(fields[0], 10, 32)
			if err != nil {
				t.Fatal(err)
			}
			return uint32(n)
		}
	}
	t.Fatalf("no Uid line in /proc/%d/status", pid)
	return 0
}

// fromLayout returns the image tagged tag in the OCI layout at dir.
func fromLayout(t *testing.T, dir, tag string) v1.Image {
	t.Helper()
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	m, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range m.Manifests {
		if d.Annotations[refName] == tag {
			img, err := idx.Image(d.Digest)
			if err != nil {
				t.Fatal(err)
			}
			return img
		}
	}
	t.Fatalf("OCI layout %s has no image named %q", dir, tag)
	return nil
}

func checkSameConfig(t *testing.T, want, got v1.Image) {
	t.Helper()
	w, err := want.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	g, err := got.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	if w != g {
		t.Errorf("image config %s, want %s", g, w)
	}
}

func checkSameImage(t *testing.T, want, got v1.Image) {
	t.Helper()
	w, err := want.Digest()
	if err != nil {
		t.Fatal(err)
	}
	g, err := got.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if w != g {
		t.Errorf("image digest %s, want %s", g, w)
	}
}

// unpack extracts the image's flattened root filesystem into dir and returns its entries'
// names (directories with a trailing slash), sorted.
func unpack(t *testing.T, img v1.Image, dir string) []string {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	var names []string
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		clean := path.Clean("/" + h.Name)[1:]
		if clean == "" || clean != strings.TrimSuffix(h.Name, "/") {
			t.Fatalf("unexpected entry name %q", h.Name)
		}
		target := filepath.Join(dir, clean)
		switch h.Typeflag {
		case tar.TypeDir:
			names = append(names, clean+"/")
			if err := os.MkdirAll(target, 0o755); err != nil {
				t.Fatal(err)
			}
		case tar.TypeReg:
			names = append(names, clean)
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(target, b, 0o600); err != nil {
				t.Fatal(err)
			}
		default:
			t.Fatalf("entry %s of type %c: the image should hold only files and directories", h.Name, h.Typeflag)
		}
		if err := os.Chmod(target, h.FileInfo().Mode()); err != nil {
			t.Fatal(err)
		}
		if err := os.Lchown(target, h.Uid, h.Gid); err != nil && os.Geteuid() == 0 {
			t.Fatal(err)
		}
	}
	slices.Sort(names)
	return names
}

// countCerts parses every PEM block of the bundle as a certificate.
func countCerts(t *testing.T, file string) int {
	t.Helper()
	rest, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if _, err := x509.ParseCertificate(block.Bytes); err != nil {
			t.Errorf("%s: certificate %d: %v", file, n, err)
		}
		n++
	}
	return n
}

// checkBinary checks that the binary is static (no ELF interpreter), built with cgo off,
// and linked with the very module versions the workspace's tests use.
func checkBinary(t *testing.T, root, bin string) {
	t.Helper()
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("%s has an ELF interpreter: not a static binary", bin)
		}
	}
	_ = f.Close() // read only
	bi, err := buildinfo.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(bi.Settings, func(s debug.BuildSetting) bool { return s.Key == "CGO_ENABLED" && s.Value == "0" }) {
		t.Errorf("%s: build settings %v, want CGO_ENABLED=0", bin, bi.Settings)
	}

	cmd := exec.Command("go", "list", "-m", "-json", "all")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "GOWORK="+filepath.Join(root, "go.work"))
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -m all in the workspace: %v", err)
	}
	workspace := map[string]string{}
	dec := json.NewDecoder(bytes.NewReader(out))
	for dec.More() {
		var m struct{ Path, Version string }
		if err := dec.Decode(&m); err != nil {
			t.Fatal(err)
		}
		workspace[m.Path] = m.Version
	}
	checked := 0
	for _, d := range bi.Deps {
		if d.Replace != nil || strings.HasPrefix(d.Path, "notify/") {
			continue
		}
		if want := workspace[d.Path]; d.Version != want {
			t.Errorf("%s: %s %s, but the workspace's tests use %q", bin, d.Path, d.Version, want)
		}
		checked++
	}
	if _, ok := workspace["google.golang.org/grpc"]; !ok || checked < 10 {
		t.Errorf("only %d modules compared; the binary's dependencies are not what this test expects", checked)
	}
}

func goBuild(t *testing.T, out, pkg string) {
	t.Helper()
	cmd := exec.Command("go", "build", "-trimpath", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
}

func get(url string) (int, string) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
