package cli_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"notify/pkg/cli"
)

func TestProgramMain(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		args       []string
		serveErr   error
		wantCode   int
		wantServed bool
		wantKeys   []string // arguments the keys command got; nil: not run
		wantStdout []string // each must appear
		wantStderr []string
	}{
		{name: "serve", wantCode: 0, wantServed: true},
		{name: "serve fails", serveErr: errors.New("broker gone"), wantCode: 1, wantServed: true, wantStderr: []string{`"msg":"demo stopped"`, `"err":"broker gone"`}},
		{
			name: "serve fails with several problems", serveErr: errors.Join(errors.New("A: bad"), errors.New("B: worse")),
			wantCode: 1, wantServed: true, wantStderr: []string{`"err":["A: bad","B: worse"]`},
		},
		{name: "--help", args: []string{"--help"}, wantStdout: []string{"demo: does a demo", "demo keys create|list", "--version", "DATABASE_URL AMQP_URL"}},
		{name: "-h", args: []string{"-h"}, wantStdout: []string{"Usage:"}},
		{name: "-help", args: []string{"-help"}, wantStdout: []string{"Usage:"}},
		{name: "help", args: []string{"help"}, wantStdout: []string{"Usage:"}},
		{name: "--version", args: []string{"--version"}, wantStdout: []string{"demo ", runtime.Version()}},
		{name: "-version", args: []string{"-version"}, wantStdout: []string{runtime.Version()}},
		{name: "subcommand", args: []string{"keys", "list", "--role", "admin"}, wantKeys: []string{"list", "--role", "admin"}},
		{name: "subcommand help is its own", args: []string{"keys", "--help"}, wantKeys: []string{"--help"}},
		{name: "healthcheck --help", args: []string{"healthcheck", "--help"}, wantStdout: []string{"Usage:", "demo healthcheck [HOST:PORT]"}},
		{name: "healthcheck -h", args: []string{"healthcheck", "-h"}, wantStdout: []string{"Usage:"}},
		{name: "healthcheck -help", args: []string{"healthcheck", "-help"}, wantStdout: []string{"Usage:"}},
		// It was `healthcheck: the argument "help": address help: missing port in address`, exit 2.
		{name: "healthcheck help", args: []string{"healthcheck", "help"}, wantStdout: []string{"Usage:", "demo healthcheck [HOST:PORT]"}},
		// Unknown flags are named as typed (the flag package says "-timeout" for "--timeout=1s").
		{name: "healthcheck unknown flag", args: []string{"healthcheck", "--timeout=1s"}, wantCode: 2, wantStderr: []string{"healthcheck: unknown flag: --timeout\n", "Usage:"}},
		{name: "unknown flag", args: []string{"--hepl"}, wantCode: 2, wantStderr: []string{"demo: unknown flag: --hepl\n", "Usage:"}},
		{name: "unknown single-dash flag", args: []string{"-x"}, wantCode: 2, wantStderr: []string{"demo: unknown flag: -x\n", "Usage:"}},
		// A flag named like one of its variables: say where that setting goes.
		{name: "a variable as a flag", args: []string{"--database-url=postgres://db/x"}, wantCode: 2,
			wantStderr: []string{"demo: unknown flag: --database-url: demo takes its settings from the environment: DATABASE_URL=…\n", "Usage:"}},
		{name: "unknown flag after a value", args: []string{"-version=false", "-verbose"}, wantCode: 2, wantStderr: []string{"demo: unknown flag: -verbose\n"}},
		{name: "-- ends the flags", args: []string{"healthcheck", "--", "-x"}, wantCode: 2, wantStderr: []string{`the argument "-x"`}},
		{name: "unknown command", args: []string{"serve"}, wantCode: 2, wantStderr: []string{`unknown command "serve"`, "Usage:"}},
		{name: "version with arguments", args: []string{"--version", "keys"}, wantCode: 2, wantStderr: []string{"--version takes no arguments"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var served bool
			var keysArgs []string
			p := cli.Program{
				Name:    "demo",
				Summary: "does a demo",
				Serve: func(context.Context) error {
					served = true
					return tt.serveErr
				},
				Env: []string{"DATABASE_URL", "AMQP_URL"},
				Commands: []cli.Command{{
					Name: "keys", Args: "create|list|revoke ...", Summary: "manage keys",
					Run: func(_ context.Context, args []string, _, _ io.Writer) int {
						keysArgs = append([]string{}, args...)
						return 0
					},
				}},
			}
			var stdout, stderr bytes.Buffer
			code := p.Main(context.Background(), tt.args, &stdout, &stderr)
			if code != tt.wantCode {
				t.Errorf("exit code = %d, want %d; stderr:\n%s", code, tt.wantCode, stderr.String())
			}
			if served != tt.wantServed {
				t.Errorf("served = %t, want %t", served, tt.wantServed)
			}
			if diff := cmp.Diff(tt.wantKeys, keysArgs); diff != "" {
				t.Errorf("keys arguments (-want +got):\n%s", diff)
			}
			for _, s := range tt.wantStdout {
				if !strings.Contains(stdout.String(), s) {
					t.Errorf("stdout does not contain %q:\n%s", s, stdout.String())
				}
			}
			for _, s := range tt.wantStderr {
				if !strings.Contains(stderr.String(), s) {
					t.Errorf("stderr does not contain %q:\n%s", s, stderr.String())
				}
			}
			if len(tt.wantStderr) == 0 && stderr.Len() > 0 {
				t.Errorf("unexpected stderr:\n%s", stderr.String())
			}
		})
	}
}

func TestHealthcheck(t *testing.T) {
	t.Parallel()
	ready := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/readyz" {
			http.NotFound(w, r)
			return
		}
		_, _ = io.WriteString(w, "database: ok\n")
	}))
	t.Cleanup(ready.Close)
	notReady := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "rabbitmq: not connected: connection refused", http.StatusServiceUnavailable)
	}))
	t.Cleanup(notReady.Close)
	closed := httptest.NewServer(http.NotFoundHandler())
	closedAddr := closed.Listener.Addr().String()
	closed.Close()
	// A service listening on every interface is asked over loopback.
	_, readyPort, _ := net.SplitHostPort(ready.Listener.Addr().String())

	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStdout string
		wantStderr string
	}{
		// It says which URL it asked, not which service answered: `producer healthcheck` at
		// the retrier's port said "producer: ready".
		{"ready", []string{"healthcheck", ready.Listener.Addr().String()}, 0, "ready: " + ready.URL + "/readyz\n", ""},
		{"every interface", []string{"healthcheck", "0.0.0.0:" + readyPort}, 0, "ready: http://127.0.0.1:" + readyPort + "/readyz\n", ""},
		{"not ready", []string{"healthcheck", notReady.Listener.Addr().String()}, 1, "",
			"not ready: " + notReady.URL + "/readyz answered 503 Service Unavailable:\nrabbitmq: not connected"},
		{"nothing listening", []string{"healthcheck", closedAddr}, 1, "", "not ready: http://" + closedAddr + "/readyz: dial tcp"},
		{"not an address", []string{"healthcheck", "9101"}, 2, "", `healthcheck: the argument "9101"`},
		{"too many arguments", []string{"healthcheck", "a:1", "b:2"}, 2, "", "at most one argument"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var stdout, stderr bytes.Buffer
			p := cli.Program{Name: "demo", Summary: "does a demo", Serve: func(context.Context) error {
				t.Error("healthcheck started the server")
				return nil
			}}
			code := p.Main(t.Context(), tt.args, &stdout, &stderr)
			if code != tt.wantCode || stdout.String() != tt.wantStdout || !strings.Contains(stderr.String(), tt.wantStderr) {
				t.Errorf("exit %d, stdout %q, stderr %q; want %d, stdout %q, stderr with %q", code, stdout.String(), stderr.String(), tt.wantCode, tt.wantStdout, tt.wantStderr)
			}
			if code != 2 && strings.Contains(stdout.String()+stderr.String(), "demo") {
				t.Errorf("stdout %q, stderr %q name the program, which need not be what answered", stdout.String(), stderr.String())
			}
		})
	}
}

// TestHealthcheckFindsTheServiceWithoutSettings: with no argument, healthcheck asks the
// address in the program's variable, else the service's default address (`sender
// healthcheck` on a machine running `make run` used to exit 2, "METRICS_ADDR is not set";
// `fcm-emulator healthcheck` read METRICS_ADDR, which the emulator does not use). Not
// parallel: it sets the variables.
func TestHealthcheckFindsTheServiceWithoutSettings(t *testing.T) {
	ready := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/readyz" {
			http.NotFound(w, r)
			return
		}
		_, _ = io.WriteString(w, "ok\n")
	}))
	t.Cleanup(ready.Close)
	addr := ready.Listener.Addr().String()
	tests := []struct {
		name       string
		program    cli.Program
		env        map[string]string
		wantCode   int
		wantStderr string
	}{
		{"the default address", cli.Program{HealthDefault: addr}, nil, 0, ""},
		{"METRICS_ADDR wins over the default", cli.Program{HealthDefault: "127.0.0.1:1"}, map[string]string{"METRICS_ADDR": addr}, 0, ""},
		{"the program's own variable", cli.Program{HealthVar: "DEMO_ADDR", HealthDefault: "127.0.0.1:1"},
			map[string]string{"DEMO_ADDR": addr, "METRICS_ADDR": "127.0.0.1:1"}, 0, ""},
		{"no address at all", cli.Program{}, nil, 2, "healthcheck: METRICS_ADDR is not set"},
		{"a bad variable is named", cli.Program{HealthVar: "DEMO_ADDR"}, map[string]string{"DEMO_ADDR": "nope"}, 2, `healthcheck: DEMO_ADDR "nope"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("METRICS_ADDR", "")
			t.Setenv("DEMO_ADDR", "")
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			p := tt.program
			p.Name, p.Summary = "demo", "does a demo"
			p.Serve = func(context.Context) error {
				t.Error("healthcheck started the server")
				return nil
			}
			var stdout, stderr bytes.Buffer
			code := p.Main(t.Context(), []string{"healthcheck"}, &stdout, &stderr)
			if code != tt.wantCode || !strings.Contains(stderr.String(), tt.wantStderr) {
				t.Errorf("exit %d, stdout %q, stderr %q; want %d, stderr with %q", code, stdout.String(), stderr.String(), tt.wantCode, tt.wantStderr)
			}
		})
	}
	var help bytes.Buffer
	cli.Program{Name: "demo", HealthVar: "DEMO_ADDR"}.Main(t.Context(), []string{"--help"}, &help, io.Discard)
	if !strings.Contains(help.String(), "running at DEMO_ADDR (or HOST:PORT)") {
		t.Errorf("--help does not name the healthcheck's variable:\n%s", help.String())
	}
}

// TestTraced: a traced program lists the OTEL_* variables in --help and refuses to serve
// with a tracing configuration it cannot honour, naming the variable.
func TestTraced(t *testing.T) {
	t.Setenv("OTEL_TRACES_EXPORTER", "zipkin")
	served := false
	p := cli.Program{Name: "demo", Summary: "does a demo", Env: []string{"AMQP_URL"}, Traced: true,
		Serve: func(context.Context) error { served = true; return nil }}
	var stdout, stderr bytes.Buffer
	if code := p.Main(t.Context(), []string{"--help"}, &stdout, io.Discard); code != 0 || !strings.Contains(stdout.String(), "AMQP_URL OTEL_TRACES_EXPORTER") {
		t.Errorf("--help: code %d, stdout:\n%s\nwant the OTEL_* variables after AMQP_URL", code, &stdout)
	}
	// The ones README's Configuration table names for turning tracing on.
	for _, v := range []string{"OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_ENDPOINT",
		"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES"} {
		if !strings.Contains(stdout.String(), v) {
			t.Errorf("--help does not list %s:\n%s", v, &stdout)
		}
	}
	if code := p.Main(t.Context(), nil, io.Discard, &stderr); code != cli.ExitFailure || served || !strings.Contains(stderr.String(), "OTEL_TRACES_EXPORTER") {
		t.Errorf("serve: code %d, served %v, stderr %s; want 1, not served, the variable named", code, served, &stderr)
	}
}
