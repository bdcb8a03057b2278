package k8s

import (
	"context"
	"net"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
)

// loadCompose loads docker-compose.yml with compose-go, the loader `docker compose config`
// uses: the file is validated against the Compose schema, interpolated with env and resolved
// as Docker Compose would (env files, profiles, merges).
func loadCompose(t *testing.T, env []string, profiles ...string) *types.Project {
	t.Helper()
	p, err := tryLoadCompose(env, profiles...)
	if err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	return p
}

func tryLoadCompose(env []string, profiles ...string) (*types.Project, error) {
	opts, err := cli.NewProjectOptions([]string{"../../docker-compose.yml"},
		cli.WithWorkingDirectory("../.."), cli.WithEnv(env), cli.WithProfiles(profiles))
	if err != nil {
		return nil, err
	}
	return opts.LoadProject(context.Background())
}

// TestComposePasswords checks that the stack never starts on well-known passwords: the
// production .env as copied (passwords blank) or no settings at all are refused, naming the
// variable to set.
func TestComposePasswords(t *testing.T) {
	t.Parallel()
	production := readEnvFile(t, "../compose/production.env.example")
	for _, tc := range []struct {
		name string
		env  []string
		// wantMissing is the variable the error must name; "" means the file loads.
		wantMissing string
	}{
		{name: "no settings", wantMissing: "POSTGRES_PASSWORD"},
		{name: "production.env.example as copied", env: production, wantMissing: "POSTGRES_PASSWORD"},
		{name: "only POSTGRES_PASSWORD", env: withEnv(production, "POSTGRES_PASSWORD=x"), wantMissing: "RABBITMQ_PASSWORD"},
		{name: "only RABBITMQ_PASSWORD", env: withEnv(production, "RABBITMQ_PASSWORD=x"), wantMissing: "POSTGRES_PASSWORD"},
		{name: "both set", env: withEnv(production, "POSTGRES_PASSWORD=x", "RABBITMQ_PASSWORD=y")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := tryLoadCompose(tc.env)
			switch {
			case tc.wantMissing == "" && err != nil:
				t.Errorf("docker-compose.yml: %v", err)
			case tc.wantMissing != "" && err == nil:
				t.Errorf("docker-compose.yml loads, want an error naming %s", tc.wantMissing)
			case tc.wantMissing != "" && !strings.Contains(err.Error(), "set "+tc.wantMissing):
				t.Errorf("docker-compose.yml: %v, want it to name %s", err, tc.wantMissing)
			}
		})
	}
}

// withEnv returns env with the NAME=value settings of set in place of those of the same name.
func withEnv(env []string, set ...string) []string {
	out := slices.Clone(env)
	for _, kv := range set {
		name, _, _ := strings.Cut(kv, "=")
		out = slices.DeleteFunc(out, func(e string) bool { return strings.HasPrefix(e, name+"=") })
		out = append(out, kv)
	}
	return out
}

func TestCompose(t *testing.T) {
	t.Parallel()
	images := madeImages(t)
	dev := readEnvFile(t, "../compose/dev.env")
	production := readEnvFile(t, "../compose/production.env.example")
	for _, tc := range []struct {
		name     string
		env      []string
		profiles []string
		// wantEndpoint is FCM_ENDPOINT in the sender and retrier.
		wantEndpoint string
	}{
		// As the compose file's header and README start development (scripts/devenv.sh
		// also loads dev.env, for rabbitmq and postgres alone).
		{name: "dev.env", env: dev, profiles: []string{"emulator"}, wantEndpoint: "http://fcm-emulator:9099/v1"},
		// Filled in: nothing points the senders at the emulator behind anyone's back, and
		// every *_FILE (the Slack webhook's too) is under a read-only mount of its service.
		{name: "production.env.example", env: withEnv(production, "POSTGRES_PASSWORD=x", "RABBITMQ_PASSWORD=y",
			"SLACK_WEBHOOK_URL_FILE=/etc/notify/slack/webhook-url"), wantEndpoint: ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := loadCompose(t, tc.env, tc.profiles...)
			checkInfrastructure(t, p)
			for _, name := range services {
				s, ok := p.Services[name]
				if !ok {
					t.Errorf("no compose service %s", name)
					continue
				}
				checkComposeService(t, s, images)
				if name == "sender" || name == "retrier" {
					if got := env(s, "FCM_ENDPOINT"); got != tc.wantEndpoint {
						t.Errorf("%s: FCM_ENDPOINT=%q, want %q", name, got, tc.wantEndpoint)
					}
					if host := endpointHost(env(s, "FCM_ENDPOINT")); host != "" {
						if _, ok := p.Services[host]; !ok {
							t.Errorf("%s: FCM_ENDPOINT names %s, which this configuration does not run", name, host)
						}
					}
				}
			}
		})
	}
}

// checkInfrastructure checks RabbitMQ and PostgreSQL: supported versions, health checks the
// notify services wait on, and data in named volumes.
func checkInfrastructure(t *testing.T, p *types.Project) {
	t.Helper()
	rabbit := p.Services["rabbitmq"]
	_, tag, _ := strings.Cut(rabbit.Image, ":")
	if !(strings.HasPrefix(tag, "4") || strings.HasPrefix(tag, "3.13")) {
		t.Errorf("rabbitmq: image %s, want 3.13 or 4.x (quorum queues, supported)", rabbit.Image)
	}
	if rabbit.Hostname == "" {
		t.Errorf("rabbitmq: set a hostname: the node name names the data directory")
	}
	for name, dir := range map[string]string{"rabbitmq": "/var/lib/rabbitmq", "postgres": "/var/lib/postgresql/data"} {
		s := p.Services[name]
		if s.HealthCheck == nil || len(s.HealthCheck.Test) == 0 {
			t.Errorf("%s: no healthcheck", name)
		}
		named := false
		for _, v := range s.Volumes {
			if v.Type == types.VolumeTypeVolume && v.Target == dir {
				_, named = p.Volumes[v.Source]
			}
		}
		if !named {
			t.Errorf("%s: %s is not on a named volume", name, dir)
		}
	}
}

// checkComposeService checks a notify service the way checkPod checks a pod.
func checkComposeService(t *testing.T, s types.ServiceConfig, images []string) {
	t.Helper()
	if s.Image != "notify/"+s.Name || !slices.Contains(images, s.Name) {
		t.Errorf("%s: image %q, want notify/%s as `make images` builds it (%v)", s.Name, s.Image, s.Name, images)
	}
	if s.User != "65532:65532" || !s.ReadOnly || !slices.Equal(s.CapDrop, []string{"ALL"}) {
		t.Errorf("%s: want user 65532:65532, read_only and cap_drop [ALL]", s.Name)
	}
	// The image's binary is its own probe (pkg/cli's healthcheck command asks /readyz).
	if s.Name != "fcm-emulator" {
		want := []string{"CMD", "/usr/local/bin/" + s.Name, "healthcheck"}
		if s.HealthCheck == nil || !slices.Equal(s.HealthCheck.Test, want) {
			t.Errorf("%s: healthcheck %v, want %v", s.Name, s.HealthCheck, want)
		}
	}
	for _, dep := range []string{"rabbitmq", "postgres"} {
		if s.DependsOn[dep].Condition != types.ServiceConditionHealthy {
			t.Errorf("%s: does not wait for a healthy %s", s.Name, dep)
		}
	}
	known := envNames(t, s.Name)
	for name := range s.Environment {
		if !known[name] {
			t.Errorf("%s: sets %s, which no code of %s or pkg/ names", s.Name, name, s.Name)
		}
	}
	for envName, required := range map[string]bool{"METRICS_ADDR": true, "GRPC_ADDR": s.Name == "producer"} {
		addr := env(s, envName)
		if addr == "" {
			if required {
				t.Errorf("%s: %s not set", s.Name, envName)
			}
			continue
		}
		host, port, err := net.SplitHostPort(addr)
		if err != nil || host != "0.0.0.0" || !publishes(s, port) {
			t.Errorf("%s: %s=%s, want 0.0.0.0:<a published port>", s.Name, envName, addr)
		}
	}
	for fileVar := range s.Environment {
		file := env(s, fileVar)
		if !strings.HasSuffix(fileVar, "_FILE") || file == "" {
			continue
		}
		mounted := false
		for _, v := range s.Volumes {
			mounted = mounted || v.ReadOnly && strings.HasPrefix(file, path.Clean(v.Target)+"/")
		}
		if !mounted {
			t.Errorf("%s: %s=%s is not under a read-only mount", s.Name, fileVar, file)
		}
	}
}

func env(s types.ServiceConfig, name string) string {
	if v := s.Environment[name]; v != nil {
		return *v
	}
	return ""
}

func publishes(s types.ServiceConfig, port string) bool {
	for _, p := range s.Ports {
		if strconv.Itoa(int(p.Target)) == port && p.Published != "" {
			return true
		}
	}
	return false
}

// endpointHost returns the host of an http URL ("http://fcm-emulator:9099/v1" → "fcm-emulator").
func endpointHost(u string) string {
	rest, ok := strings.CutPrefix(u, "http://")
	if !ok {
		return ""
	}
	hostport, _, _ := strings.Cut(rest, "/")
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return hostport
	}
	return host
}

// readEnvFile reads NAME=value lines as compose's --env-file does (comments and blanks skipped).
func readEnvFile(t *testing.T, file string) []string {
	t.Helper()
	var out []string
	for i, line := range strings.Split(readFile(t, file), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if name, _, ok := strings.Cut(line, "="); !ok || !isEnvName(name) {
			t.Fatalf("%s:%d: not NAME=value: %q", file, i+1, line)
		}
		out = append(out, line)
	}
	if len(out) == 0 {
		t.Fatalf("%s: no settings", file)
	}
	return out
}

func readFile(t *testing.T, file string) string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
