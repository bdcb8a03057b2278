package main

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"notify/pkg/tlstest"
)

// countingListener counts the connections it accepts.
type countingListener struct {
	net.Listener
	accepted atomic.Int32
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.accepted.Add(1)
	}
	return c, err
}

// serveWith runs a health-only gRPC server built with the producer's options for env.
func serveWith(t *testing.T, env map[string]string, log *slog.Logger) *countingListener {
	t.Helper()
	cfg, err := loadConfig(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	opts, err := grpcServerOptions(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lis := &countingListener{Listener: l}
	s := grpc.NewServer(opts...)
	healthpb.RegisterHealthServer(s, health.NewServer())
	go func() { _ = s.Serve(lis) }()
	t.Cleanup(s.Stop)
	return lis
}

func check(ctx context.Context, conn *grpc.ClientConn) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	return err
}

func dial(t *testing.T, addr string, creds credentials.TransportCredentials) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// TestGRPCTLSFromEnvironment: the GRPC_TLS_* variables give the producer's server TLS and
// mutual TLS (the reload and refusal cases are tested in internal/tlsfiles).
func TestGRPCTLSFromEnvironment(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca, clientCA := tlstest.NewCA(t, "server CA"), tlstest.NewCA(t, "client CA")
	certFile, keyFile := ca.Server(t).Write(t, dir, "server")
	client := clientCA.Client(t, "ops")
	clientPair, err := tls.X509KeyPair(client.CertPEM, client.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	withCA := credentials.NewTLS(&tls.Config{RootCAs: ca.Pool()})
	withCert := credentials.NewTLS(&tls.Config{RootCAs: ca.Pool(), Certificates: []tls.Certificate{clientPair}})

	var logs strings.Builder
	tlsOnly := serveWith(t, map[string]string{"GRPC_TLS_CERT_FILE": certFile, "GRPC_TLS_KEY_FILE": keyFile},
		slog.New(slog.NewTextHandler(&logs, nil)))
	if err := check(t.Context(), dial(t, tlsOnly.Addr().String(), withCA)); err != nil {
		t.Errorf("TLS: client trusting the CA: %v", err)
	}
	if err := check(t.Context(), dial(t, tlsOnly.Addr().String(), insecure.NewCredentials())); err == nil {
		t.Error("TLS: plaintext client accepted")
	}
	if !strings.Contains(logs.String(), "gRPC API over TLS") || strings.Contains(logs.String(), "plaintext") {
		t.Errorf("TLS start log:\n%s", logs.String())
	}

	mutual := serveWith(t, map[string]string{"GRPC_TLS_CERT_FILE": certFile, "GRPC_TLS_KEY_FILE": keyFile,
		"GRPC_TLS_CLIENT_CA_FILE": clientCA.WriteCA(t, dir, "clients.pem")}, discard)
	if err := check(t.Context(), dial(t, mutual.Addr().String(), withCert)); err != nil {
		t.Errorf("mTLS: client with a certificate: %v", err)
	}
	if err := check(t.Context(), dial(t, mutual.Addr().String(), withCA)); err == nil {
		t.Error("mTLS: client without a certificate accepted")
	}

	logs.Reset()
	plain := serveWith(t, nil, slog.New(slog.NewTextHandler(&logs, nil)))
	if err := check(t.Context(), dial(t, plain.Addr().String(), insecure.NewCredentials())); err != nil {
		t.Errorf("plaintext by default: %v", err)
	}
	for _, want := range []string{"level=WARN", "plaintext", "GRPC_TLS_CERT_FILE", "GRPC_TLS_KEY_FILE", "GRPC_TLS_CLIENT_CA_FILE"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("plaintext start log lacks %q:\n%s", want, logs.String())
		}
	}
}

// TestGRPCMaxConnectionAge: a client is moved to a new connection once its connection is
// older than GRPC_MAX_CONNECTION_AGE, which is what spreads clients over new replicas.
func TestGRPCMaxConnectionAge(t *testing.T) {
	t.Parallel()
	lis := serveWith(t, map[string]string{"GRPC_MAX_CONNECTION_AGE": "1s", "SHUTDOWN_TIMEOUT": "1s"}, discard)
	conn := dial(t, lis.Addr().String(), insecure.NewCredentials())
	if err := check(t.Context(), conn); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for lis.accepted.Load() < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("still %d connection(s) after 20s with GRPC_MAX_CONNECTION_AGE=1s", lis.accepted.Load())
		}
		if err := check(t.Context(), conn); err != nil {
			t.Fatalf("call across the connection change: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

// TestGRPCServerStops checks the stop sequence: health (NOT_SERVING until the readiness
// checks pass, then SERVING) turns NOT_SERVING while calls are
// still running, a call that never ends (a Watch stream) is closed after the shutdown
// timeout, and Run returns nil.
func TestGRPCServerStops(t *testing.T) {
	t.Parallel()
	api, err := newGRPCServer("127.0.0.1:0", 200*time.Millisecond, discard, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- api.Run(ctx) }()

	conn := dial(t, api.Addr().String(), insecure.NewCredentials())
	watchCtx, stopWatch := context.WithCancel(context.Background())
	defer stopWatch()
	watch, err := healthpb.NewHealthClient(conn).Watch(watchCtx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	first, err := watch.Recv()
	if err != nil || first.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("first health status = %v, %v; want NOT_SERVING until SetServing", first.GetStatus(), err)
	}
	api.SetServing(true)
	ready, err := watch.Recv()
	if err != nil || ready.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health status after SetServing(true) = %v, %v; want SERVING", ready.GetStatus(), err)
	}

	cancel()
	next, err := watch.Recv()
	if err != nil || next.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("health status after the stop began = %v, %v; want NOT_SERVING", next.GetStatus(), err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v, want nil", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("Run did not return after its shutdown timeout")
	}
	if _, err := watch.Recv(); err == nil {
		t.Error("the Watch stream is still open after Run returned")
	}
}

func TestGRPCServerAddrInUse(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, err = newGRPCServer(l.Addr().String(), time.Second, discard, prometheus.NewRegistry())
	if err == nil || !strings.HasPrefix(err.Error(), "GRPC_ADDR: ") {
		t.Errorf("newGRPCServer on a taken port = %v, want an error naming GRPC_ADDR", err)
	}
}

// TestGRPCServerMetrics: every method's grpc_server_handled_total series exists at zero
// before any call, and a call refused by an interceptor of the run (as auth refuses) is
// counted with its code, as is one that succeeds.
func TestGRPCServerMetrics(t *testing.T) {
	t.Parallel()
	refuse := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, next grpc.UnaryHandler) (any, error) {
		if r, ok := req.(*healthpb.HealthCheckRequest); ok && r.GetService() == "refuse me" {
			return nil, status.Error(codes.Unauthenticated, "no API key")
		}
		return next(ctx, req)
	}
	reg := prometheus.NewRegistry()
	api, err := newGRPCServer("127.0.0.1:0", time.Second, discard, reg, grpc.ChainUnaryInterceptor(refuse))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- api.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	api.SetServing(true)

	handled := func(method, code string) float64 {
		t.Helper()
		return counterValue(t, reg, "grpc_server_handled_total", map[string]string{
			"grpc_service": "grpc.health.v1.Health", "grpc_method": method, "grpc_code": code, "grpc_type": "unary"})
	}
	health := healthpb.NewHealthClient(dial(t, api.Addr().String(), insecure.NewCredentials()))
	waitFor := func(cond func() bool) bool {
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if cond() {
				return true
			}
		}
		return false
	}
	// Run initialises the series one by one as it begins: wait for the two read below.
	if !waitFor(func() bool { return handled("Check", "Unauthenticated") >= 0 && handled("List", "Internal") >= 0 }) {
		t.Fatal("grpc_server_handled_total not initialised after Run began")
	}
	if got := handled("Check", "Unauthenticated"); got != 0 {
		t.Errorf("before any call: Check Unauthenticated = %v, want 0 (initialised)", got)
	}
	if _, err := health.Check(t.Context(), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := health.Check(t.Context(), &healthpb.HealthCheckRequest{Service: "refuse me"}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("refused call = %v, want Unauthenticated", err)
	}
	if got := handled("Check", "OK"); got != 1 {
		t.Errorf("Check OK = %v, want 1", got)
	}
	if got := handled("Check", "Unauthenticated"); got != 1 {
		t.Errorf("Check Unauthenticated = %v, want 1", got)
	}
	if got := handled("List", "Internal"); got != 0 {
		t.Errorf("List Internal = %v, want 0 (initialised, never called)", got)
	}
	if n := histogramCount(t, reg, "grpc_server_handling_seconds", "Check"); n != 2 {
		t.Errorf("grpc_server_handling_seconds count for Check = %d, want 2", n)
	}
}

// counterValue returns the value of the counter name whose labels include want, or -1 when
// there is no such series.
func counterValue(t *testing.T, reg *prometheus.Registry, name string, want map[string]string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	metrics:
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			for k, v := range want {
				if labels[k] != v {
					continue metrics
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	return -1
}

// histogramCount returns the sample count of the histogram name for the health method.
func histogramCount(t *testing.T, reg *prometheus.Registry, name, method string) uint64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "grpc_method" && l.GetValue() == method {
					return m.GetHistogram().GetSampleCount()
				}
			}
		}
	}
	return 0
}
