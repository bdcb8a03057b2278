package metrics

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"

	"notify/pkg/buildinfo"
)

func TestHealthEndpoints(t *testing.T) {
	t.Parallel()
	pass := func(context.Context) error { return nil }
	fail := func(context.Context) error { return errors.New("dial tcp 127.0.0.1:1: connection refused") }
	blocked := func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }
	tests := []struct {
		name       string
		checks     []Check
		path       string
		wantStatus int
		wantBody   []string
	}{
		{"live while a check fails", []Check{{"rabbitmq", fail}}, "/livez", 200, []string{"ok"}},
		{"ready", []Check{{"database", pass}, {"rabbitmq", pass}}, "/readyz", 200, []string{"database: ok", "rabbitmq: ok"}},
		{"no checks", nil, "/readyz", 200, []string{"ok"}},
		{"not ready", []Check{{"database", pass}, {"rabbitmq", fail}}, "/readyz", 503,
			[]string{"database: ok", "rabbitmq: dial tcp 127.0.0.1:1: connection refused", "not ready"}},
		{"healthz is readyz", []Check{{"rabbitmq", fail}}, "/healthz", 503, []string{"rabbitmq: dial tcp"}},
		{"a hung check times out", []Check{{"database", blocked}}, "/readyz", 503, []string{"database: context deadline exceeded"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := NewServer("127.0.0.1:0", NewRegistry(), slog.New(slog.DiscardHandler), tt.checks...)
			rec := httptest.NewRecorder()
			s.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, tt.path, nil))
			body, _ := io.ReadAll(rec.Body)
			if rec.Code != tt.wantStatus {
				t.Errorf("GET %s = %d, want %d; body:\n%s", tt.path, rec.Code, tt.wantStatus, body)
			}
			for _, want := range tt.wantBody {
				if !strings.Contains(string(body), want) {
					t.Errorf("GET %s body lacks %q:\n%s", tt.path, want, body)
				}
			}
		})
	}
}

func TestReady(t *testing.T) {
	t.Parallel()
	err := Ready(context.Background(), []Check{
		{"database", func(context.Context) error { return nil }},
		{"consumer", func(context.Context) error { return errors.New("not consuming notify.send") }},
	})
	if err == nil || err.Error() != "consumer: not consuming notify.send" {
		t.Errorf("Ready = %v, want the failing check named", err)
	}
	if err := Ready(context.Background(), []Check{{"database", func(context.Context) error { return nil }}}); err != nil {
		t.Errorf("Ready with passing checks = %v", err)
	}
}

// TestBuildInfo: notify_build_info is 1 with the build's version, commit and Go version as
// labels, and every registry from NewRegistry has it for the running binary.
func TestBuildInfo(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		reg  func() *prometheus.Registry
		want map[string]string
	}{
		{"given build", func() *prometheus.Registry {
			reg := prometheus.NewRegistry()
			reg.MustRegister(BuildInfo(buildinfo.Info{Version: "v1.2.3", Commit: "0123abcd", GoVersion: "go1.26.0", Platform: "linux/amd64"}))
			return reg
		}, map[string]string{"version": "v1.2.3", "commit": "0123abcd", "go_version": "go1.26.0"}},
		{"NewRegistry", NewRegistry, map[string]string{
			"version": buildinfo.Read().Version, "commit": buildinfo.Read().Commit, "go_version": runtime.Version()}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			families, err := tt.reg().Gather()
			if err != nil {
				t.Fatal(err)
			}
			var found int
			for _, f := range families {
				if f.GetName() != "notify_build_info" {
					continue
				}
				for _, m := range f.GetMetric() {
					found++
					labels := map[string]string{}
					for _, l := range m.GetLabel() {
						labels[l.GetName()] = l.GetValue()
					}
					if diff := cmp.Diff(tt.want, labels); diff != "" {
						t.Errorf("notify_build_info labels (-want +got):\n%s", diff)
					}
					if v := m.GetGauge().GetValue(); v != 1 {
						t.Errorf("notify_build_info = %v, want 1", v)
					}
				}
			}
			if found != 1 {
				t.Errorf("%d notify_build_info series, want 1", found)
			}
		})
	}
}

// TestReadinessMetrics: notify_ready and notify_ready_check say what /readyz says.
func TestReadinessMetrics(t *testing.T) {
	t.Parallel()
	reg := NewRegistry()
	NewServer("127.0.0.1:0", reg, slog.New(slog.DiscardHandler),
		Check{"database", func(context.Context) error { return nil }},
		Check{"rabbitmq", func(context.Context) error { return errors.New("not connected") }})
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range families {
		if !strings.HasPrefix(f.GetName(), "notify_ready") {
			continue
		}
		for _, m := range f.GetMetric() {
			name := f.GetName()
			for _, l := range m.GetLabel() {
				name += "{" + l.GetName() + "=" + l.GetValue() + "}"
			}
			got[name] = m.GetGauge().GetValue()
		}
	}
	want := map[string]float64{"notify_ready": 0, "notify_ready_check{check=database}": 1, "notify_ready_check{check=rabbitmq}": 0}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("readiness metrics (-want +got):\n%s", diff)
	}
}

// TestRunNamesTheVariable: an address that cannot be listened on is reported as
// METRICS_ADDR, the variable every service reads it from (it said "metrics listen on …",
// where the producer's gRPC port says "GRPC_ADDR: listen on …").
func TestRunNamesTheVariable(t *testing.T) {
	t.Parallel()
	taken := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(taken.Close)
	addr := taken.Listener.Addr().String()
	err := NewServer(addr, prometheus.NewRegistry(), slog.New(slog.DiscardHandler)).Run(t.Context())
	if err == nil || !strings.HasPrefix(err.Error(), "METRICS_ADDR: listen on "+addr+": ") {
		t.Errorf("Run on a taken address = %v, want an error naming METRICS_ADDR", err)
	}
}
