// Package metrics serves a service's Prometheus metrics and its health endpoints.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"notify/pkg/buildinfo"
)

// NewRegistry returns a registry with the Go runtime and process collectors, so every
// service reports memory, goroutines and CPU the same way, and notify_build_info for the
// running binary.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		BuildInfo(buildinfo.Read()))
	return reg
}

// BuildInfo returns the gauge notify_build_info{version,commit,go_version}, always 1: joined
// on its labels it tells which build each scraped process runs, e.g. during a rollout.
func BuildInfo(info buildinfo.Info) prometheus.Collector {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "notify_build_info",
		Help: "Always 1; the labels name the running build (commit is empty when unknown).",
		ConstLabels: prometheus.Labels{
			"version":    info.Version,
			"commit":     info.Commit,
			"go_version": info.GoVersion,
		},
	})
	g.Set(1)
	return g
}

// Check is one named readiness condition, such as "database" or "rabbitmq". Func returns
// nil when the condition holds and otherwise an error saying why not; it must return soon
// after ctx ends.
type Check struct {
	Name string
	Func func(ctx context.Context) error
}

// CheckTimeout bounds one round of readiness checks.
const CheckTimeout = 2 * time.Second

// Result is the outcome of one Check.
type Result struct {
	Name string
	Err  error
}

// RunChecks runs every check at once, each bounded by CheckTimeout, and returns their
// results in the order given.
func RunChecks(ctx context.Context, checks []Check) []Result {
	ctx, cancel := context.WithTimeout(ctx, CheckTimeout)
	defer cancel()
	results := make([]Result, len(checks))
	var wg sync.WaitGroup
	for i, c := range checks {
		wg.Go(func() { results[i] = Result{Name: c.Name, Err: c.Func(ctx)} })
	}
	wg.Wait()
	return results
}

// Ready runs the checks and returns nil when all pass, otherwise the failures joined, each
// prefixed with its check's name.
func Ready(ctx context.Context, checks []Check) error {
	var errs []error
	for _, r := range RunChecks(ctx, checks) {
		if r.Err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", r.Name, r.Err))
		}
	}
	return errors.Join(errs...)
}

// Server serves /metrics, /livez and /readyz (with /healthz as an alias of /readyz).
//
// /livez answers 200 for as long as the process serves HTTP: an orchestrator restarts a
// process that fails it, so it must not depend on anything a restart cannot fix (a broker
// outage). /readyz answers 200 when every readiness check passes and 503 otherwise, with
// one line per check saying what failed, so that traffic and rollouts wait for it.
type Server struct {
	addr   string
	reg    *prometheus.Registry
	checks []Check
	log    *slog.Logger
}

// NewServer returns a server for addr (host:port) with the given readiness checks, and
// registers on reg what /readyz says as metrics, evaluated at each scrape:
//
//   - notify_ready: 1 when every check passes, 0 otherwise;
//   - notify_ready_check{check}: 1 when that check passes, 0 otherwise.
func NewServer(addr string, reg *prometheus.Registry, log *slog.Logger, checks ...Check) *Server {
	reg.MustRegister(readiness{checks: checks,
		ready: prometheus.NewDesc("notify_ready", "1 when every readiness check passes (/readyz answers 200), 0 otherwise.", nil, nil),
		check: prometheus.NewDesc("notify_ready_check", "1 when the readiness check passes, 0 otherwise.", []string{"check"}, nil),
	})
	return &Server{addr: addr, reg: reg, checks: checks, log: log}
}

// readiness runs the readiness checks at scrape time.
type readiness struct {
	checks       []Check
	ready, check *prometheus.Desc
}

func (r readiness) Describe(ch chan<- *prometheus.Desc) { ch <- r.ready; ch <- r.check }

func (r readiness) Collect(ch chan<- prometheus.Metric) {
	all := 1.0
	for _, res := range RunChecks(context.Background(), r.checks) {
		v := 1.0
		if res.Err != nil {
			v, all = 0, 0
		}
		ch <- prometheus.MustNewConstMetric(r.check, prometheus.GaugeValue, v, res.Name)
	}
	ch <- prometheus.MustNewConstMetric(r.ready, prometheus.GaugeValue, all)
}

// Handler returns the HTTP handler, for tests.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{Registry: s.reg}))
	mux.HandleFunc("GET /livez", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", s.serveReady)
	mux.HandleFunc("GET /healthz", s.serveReady)
	return mux
}

func (s *Server) serveReady(w http.ResponseWriter, r *http.Request) {
	var body strings.Builder
	ready := true
	for _, res := range RunChecks(r.Context(), s.checks) {
		if res.Err != nil {
			ready = false
			fmt.Fprintf(&body, "%s: %v\n", res.Name, res.Err)
		} else {
			fmt.Fprintf(&body, "%s: ok\n", res.Name)
		}
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if !ready {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprint(w, body.String(), "not ready\n")
		return
	}
	fmt.Fprint(w, body.String(), "ok\n")
}

// Run listens on the address until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.addr)
	if err != nil {
		return fmt.Errorf("METRICS_ADDR: listen on %s: %w", s.addr, err)
	}
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	s.log.Info("metrics listening", "addr", ln.Addr().String())
	select {
	case err := <-errc:
		return fmt.Errorf("metrics server: %w", err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("metrics shutdown: %w", err)
	}
	return nil
}
