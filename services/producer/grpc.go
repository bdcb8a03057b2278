package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"notify/services/producer/internal/server"
	"notify/services/producer/internal/tlsfiles"
)

// Keepalive settings of the gRPC server. Clients pinging more often than
// keepaliveMinClientPing are told to go away (GOAWAY too_many_pings).
const (
	keepaliveTime          = time.Minute      // ping a client after this long without activity…
	keepaliveTimeout       = 20 * time.Second // …and close the connection if it does not answer
	keepaliveMinClientPing = 10 * time.Second
)

// grpcLimits bound what one client may ask of the server.
type grpcLimits struct {
	// RPCTimeout (GRPC_RPC_TIMEOUT, default 30s) is the longest any unary call may run,
	// whatever deadline its client set (server.Deadline); 0 leaves calls unbounded.
	RPCTimeout time.Duration
	// MaxRecvMsgSize (GRPC_MAX_RECV_MSG_SIZE, default 8 MiB) is the largest request, in
	// bytes; a larger one is refused with RESOURCE_EXHAUSTED before it is decoded.
	MaxRecvMsgSize int
	// MaxSendMsgSize (GRPC_MAX_SEND_MSG_SIZE, default 16 MiB) is the largest response; a
	// call whose answer would be larger fails with RESOURCE_EXHAUSTED.
	MaxSendMsgSize int
	// MaxConcurrentStreams (GRPC_MAX_CONCURRENT_STREAMS, default 256) is how many calls one
	// client connection may have running at once; further calls wait on the client.
	MaxConcurrentStreams int
}

// grpcServerOptions returns the transport options cfg asks for: TLS (mutual when a client
// CA is set) from files reloaded on rotation, or plaintext with a warning; keepalive with
// a maximum connection age; and the limits (message sizes, concurrent streams per
// connection, the server-side deadline of every unary call).
//
// Why the age: gRPC clients keep one HTTP/2 connection and multiplex every call over it,
// so behind a Kubernetes Service (a TCP load balancer) a client stays on the replica it
// first reached, and replicas added later get no traffic. Closing connections after
// GRPC_MAX_CONNECTION_AGE (with a GOAWAY, letting in-flight calls finish within
// SHUTDOWN_TIMEOUT) makes clients reconnect and spread out again.
func grpcServerOptions(cfg config, log *slog.Logger) ([]grpc.ServerOption, error) {
	opts := []grpc.ServerOption{
		grpc.KeepaliveParams(keepalive.ServerParameters{
			MaxConnectionAge:      cfg.GRPCMaxConnectionAge,
			MaxConnectionAgeGrace: max(cfg.ShutdownTimeout, time.Second),
			Time:                  keepaliveTime,
			Timeout:               keepaliveTimeout,
		}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             keepaliveMinClientPing,
			PermitWithoutStream: true,
		}),
		grpc.MaxRecvMsgSize(cfg.GRPCLimits.MaxRecvMsgSize),
		grpc.MaxSendMsgSize(cfg.GRPCLimits.MaxSendMsgSize),
		grpc.MaxConcurrentStreams(uint32(cfg.GRPCLimits.MaxConcurrentStreams)),
		// Static flow-control windows: no bandwidth-estimating PING per call.
		grpc.StaticStreamWindowSize(streamWindow),
		grpc.StaticConnWindowSize(connWindow),
		// First of the interceptors after the metrics, so authentication is bounded too.
		grpc.ChainUnaryInterceptor(server.Deadline(cfg.GRPCLimits.RPCTimeout)),
	}
	if cfg.GRPCTLS.CertFile == "" {
		log.Warn("gRPC API is plaintext (API keys travel unencrypted): for local development only; "+
			"set GRPC_TLS_CERT_FILE and GRPC_TLS_KEY_FILE for TLS, and GRPC_TLS_CLIENT_CA_FILE for mutual TLS", "addr", cfg.GRPCAddr)
		return opts, nil
	}
	var errs []error
	for _, f := range []struct{ name, path string }{
		{"GRPC_TLS_CERT_FILE", cfg.GRPCTLS.CertFile}, {"GRPC_TLS_KEY_FILE", cfg.GRPCTLS.KeyFile}, {"GRPC_TLS_CLIENT_CA_FILE", cfg.GRPCTLS.ClientCAFile},
	} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", f.name, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	certs, err := tlsfiles.New(cfg.GRPCTLS, tlsfiles.DefaultCheckInterval, log)
	if err != nil {
		return nil, fmt.Errorf("gRPC TLS files (GRPC_TLS_CERT_FILE, GRPC_TLS_KEY_FILE, GRPC_TLS_CLIENT_CA_FILE): %w", err)
	}
	leaf := certs.Leaf()
	log.Info("gRPC API over TLS", "mutual_tls", cfg.GRPCTLS.ClientCAFile != "", "subject", leaf.Subject.String(),
		"not_after", leaf.NotAfter, "reload_check", tlsfiles.DefaultCheckInterval.String())
	return append(opts, grpc.Creds(credentials.NewTLS(certs.ServerConfig()))), nil
}

// grpcServer is the producer's gRPC server: the API services registered on it, health and
// reflection. It is built with the options grpcServerOptions returns plus the run's
// interceptors; what the transport needs goes there, not here.
type grpcServer struct {
	srv             *grpc.Server
	health          *health.Server
	metrics         *grpcprom.ServerMetrics
	lis             net.Listener
	shutdownTimeout time.Duration
	log             *slog.Logger

	services []string    // the API services registered, whose health SetServing reports
	serving  atomic.Bool // Run is serving
	open     atomic.Bool // Open was called: the API's calls reach their handlers
}

// grpcLatencyBuckets are the bounds (seconds) of grpc_server_handling_seconds: Publish
// and device calls take milliseconds, Replay and list calls up to seconds.
var grpcLatencyBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}

// newGRPCServer listens on addr (GRPC_ADDR) and builds the server with opts. Listening
// here, before anything runs, makes a taken port a start-up error.
//
// Every RPC is counted and timed on reg (grpc_server_started_total, grpc_server_handled_total
// by grpc_code, grpc_server_handling_seconds) by interceptors placed before those in opts,
// so calls the auth interceptors refuse are counted too.
// streamWorkers is how many goroutines wait for calls: more than the calls a producer
// usually has in flight (make bench publishes with 32 clients), few enough to cost nothing
// idle.
const streamWorkers = 64

func newGRPCServer(addr string, shutdownTimeout time.Duration, log *slog.Logger, reg prometheus.Registerer, opts ...grpc.ServerOption) (*grpcServer, error) {
	m := grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram(grpcprom.WithHistogramBuckets(grpcLatencyBuckets)))
	if err := reg.Register(m); err != nil {
		return nil, fmt.Errorf("register gRPC metrics: %w", err)
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("GRPC_ADDR: listen on %s: %w", addr, err)
	}
	s := &grpcServer{}
	opts = append([]grpc.ServerOption{
		// Calls run on goroutines that stay for the next call (a new one when all are
		// busy): a call's stack is deep (interceptors, validation, the group commit), and a
		// fresh goroutine grows its stack to that depth by doubling and copying, every call
		// (make bench's sustain phase: runtime.morestack 6.5% of the producer's CPU).
		grpc.NumStreamWorkers(streamWorkers),
		grpc.ChainUnaryInterceptor(m.UnaryServerInterceptor(), s.unaryGate),
		grpc.ChainStreamInterceptor(m.StreamServerInterceptor(), s.streamGate),
	}, opts...)
	*s = grpcServer{
		srv:             grpc.NewServer(opts...),
		health:          health.NewServer(),
		metrics:         m,
		lis:             lis,
		shutdownTimeout: shutdownTimeout,
		log:             log,
	}
	healthpb.RegisterHealthServer(s.srv, s.health)
	reflection.Register(s.srv)
	// Not ready until told otherwise (SetServing): the health server's default for the
	// whole server ("") is SERVING.
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	return s, nil
}

// RegisterService makes grpcServer a grpc.ServiceRegistrar, for the generated Register…Server
// functions. The service's health starts NOT_SERVING.
func (s *grpcServer) RegisterService(desc *grpc.ServiceDesc, impl any) {
	s.srv.RegisterService(desc, impl)
	s.services = append(s.services, desc.ServiceName)
	s.health.SetServingStatus(desc.ServiceName, healthpb.HealthCheckResponse_NOT_SERVING)
}

// SetServing sets the health of the whole server ("") and of every registered API service
// to SERVING or NOT_SERVING. It has no effect once Run has begun stopping.
func (s *grpcServer) SetServing(serving bool) {
	status := healthpb.HealthCheckResponse_NOT_SERVING
	if serving {
		status = healthpb.HealthCheckResponse_SERVING
	}
	s.health.SetServingStatus("", status)
	for _, name := range s.services {
		s.health.SetServingStatus(name, status)
	}
}

// Open lets the API's calls through to their handlers (and the interceptors of the run,
// authentication first). Until then Run already serves, so that a client is answered
// rather than left waiting for a server that does not speak: the health service and
// reflection work, and every other call is refused UNAVAILABLE (errStarting). The producer
// opens once its database answers and its schema is migrated.
func (s *grpcServer) Open() { s.open.Store(true) }

// errStarting answers calls that arrive before Open, with the RetryInfo of any UNAVAILABLE.
var errStarting = func() error {
	st := status.New(codes.Unavailable, "the producer is starting: it waits for its database and migrations (its /readyz says which), try again")
	if withInfo, err := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(time.Second)}); err == nil {
		st = withInfo
	}
	return st.Err()
}()

// gated reports whether a call of method waits for Open: every call but the health
// service's and reflection's (grpc.*).
func (s *grpcServer) gated(method string) bool {
	return !s.open.Load() && !strings.HasPrefix(method, "/grpc.")
}

func (s *grpcServer) unaryGate(ctx context.Context, req any, info *grpc.UnaryServerInfo, next grpc.UnaryHandler) (any, error) {
	if s.gated(info.FullMethod) {
		return nil, errStarting
	}
	return next(ctx, req)
}

func (s *grpcServer) streamGate(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, next grpc.StreamHandler) error {
	if s.gated(info.FullMethod) {
		return errStarting
	}
	return next(srv, ss)
}

// Check is a readiness check: nil while Run serves and the API is open.
func (s *grpcServer) Check(context.Context) error {
	if !s.serving.Load() || !s.open.Load() {
		return errors.New("not serving yet (waiting for the database and its migrations)")
	}
	return nil
}

// Addr is where the server listens.
func (s *grpcServer) Addr() net.Addr { return s.lis.Addr() }

// Run serves until ctx ends, then stops: health answers NOT_SERVING first (load balancers
// stop sending new calls), in-flight calls get up to the shutdown timeout to finish, and
// whatever is still running then (a stuck call, a Watch stream) is closed. It returns nil
// after a stop and an error only when serving itself failed.
func (s *grpcServer) Run(ctx context.Context) error {
	// Every method's series exist from the start, at zero for every code, so a rate or an
	// alert on errors sees the first one.
	s.metrics.InitializeMetrics(s.srv)
	errc := make(chan error, 1)
	go func() { errc <- s.srv.Serve(s.lis) }()
	s.serving.Store(true)
	s.log.Info("grpc listening", "addr", s.lis.Addr().String())
	select {
	case err := <-errc:
		s.serving.Store(false)
		return fmt.Errorf("grpc server: %w", err)
	case <-ctx.Done():
	}
	s.serving.Store(false)
	s.health.Shutdown()
	stopped := make(chan struct{})
	go func() { s.srv.GracefulStop(); close(stopped) }()
	timer := time.NewTimer(s.shutdownTimeout)
	defer timer.Stop()
	select {
	case <-stopped:
	case <-timer.C:
		s.log.Warn("in-flight RPCs did not finish in time; closing them", "timeout", s.shutdownTimeout)
		s.srv.Stop()
		<-stopped
	}
	return nil
}

// The HTTP/2 flow-control windows of the gRPC server, in bytes: how much a client may send
// on one call (streamWindow) and on one connection (connWindow) before the server has read
// it. They are static: with grpc-go's default, dynamic windows the server measures the
// bandwidth with a PING and a WINDOW_UPDATE on the first request after each answered
// PING, which for small calls spread over many connections is nearly every call (two more
// frames, a write and the client's reply per Publish; about 12% of the producer's CPU in
// bin/bench -phases publish). The sizes let a 4 MiB PublishBatch cross a connection with a
// round-trip time of a few milliseconds in a handful of round trips; the dynamic windows
// would grow up to 16 MiB.
const (
	streamWindow = 1 << 20
	connWindow   = 4 << 20
)
