package main

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
)

// serveLimited runs a gRPC server built with the producer's options for env, with what
// register puts on it, and returns a client connection to it.
func serveLimited(t *testing.T, env map[string]string, register func(*grpc.Server)) *grpc.ClientConn {
	t.Helper()
	return dial(t, serveProducerGRPC(t, env, register), insecure.NewCredentials())
}

// serveProducerGRPC runs a gRPC server built with the producer's options for env, with what
// register puts on it, until the test ends, and returns its address.
func serveProducerGRPC(t *testing.T, env map[string]string, register func(*grpc.Server)) string {
	t.Helper()
	cfg, err := loadConfig(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	opts, err := grpcServerOptions(cfg, discard)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer(opts...)
	register(s)
	go func() { _ = s.Serve(lis) }()
	t.Cleanup(s.Stop)
	return lis.Addr().String()
}

// stuckHealth answers Check only when the call's context ends, as a handler waiting on a
// locked row does.
type stuckHealth struct{ *health.Server }

func (stuckHealth) Check(ctx context.Context, _ *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	<-ctx.Done()
	return nil, status.FromContextError(ctx.Err()).Err()
}

// TestGRPCRPCTimeout: a call whose client set no deadline, or a later one than
// GRPC_RPC_TIMEOUT, is ended by the server after GRPC_RPC_TIMEOUT with UNAVAILABLE (the
// server's trouble; the client would have waited); one whose client's deadline comes first
// ends with DEADLINE_EXCEEDED at it.
func TestGRPCRPCTimeout(t *testing.T) {
	t.Parallel()
	conn := serveLimited(t, map[string]string{"GRPC_RPC_TIMEOUT": "300ms"}, func(s *grpc.Server) {
		healthpb.RegisterHealthServer(s, stuckHealth{health.NewServer()})
	})
	client := healthpb.NewHealthClient(conn)
	later, cancelLater := context.WithTimeout(t.Context(), time.Hour)
	defer cancelLater()
	for name, ctx := range map[string]context.Context{"no client deadline": t.Context(), "a later deadline": later} {
		start := time.Now()
		_, err := client.Check(ctx, &healthpb.HealthCheckRequest{})
		if status.Code(err) != codes.Unavailable {
			t.Errorf("%s: %v, want UNAVAILABLE from the server's 300ms", name, err)
		}
		if took := time.Since(start); took < 300*time.Millisecond || took > time.Minute {
			t.Errorf("%s: ended after %s, want the server's 300ms", name, took)
		}
	}
	earlier, cancelEarlier := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancelEarlier()
	if _, err := client.Check(earlier, &healthpb.HealthCheckRequest{}); status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("a client deadline before the server's: %v, want DEADLINE_EXCEEDED", err)
	}

	// GRPC_RPC_TIMEOUT=0: no server deadline; the client's own still applies.
	unbounded := serveLimited(t, map[string]string{"GRPC_RPC_TIMEOUT": "0"}, func(s *grpc.Server) {
		healthpb.RegisterHealthServer(s, stuckHealth{health.NewServer()})
	})
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	start := time.Now()
	_, err := healthpb.NewHealthClient(unbounded).Check(ctx, &healthpb.HealthCheckRequest{})
	if status.Code(err) != codes.DeadlineExceeded || time.Since(start) < time.Second {
		t.Errorf("GRPC_RPC_TIMEOUT=0: %v after %s, want DEADLINE_EXCEEDED at the client's 1s", err, time.Since(start))
	}
}

// TestGRPCMaxMessageSizes: a request larger than GRPC_MAX_RECV_MSG_SIZE and a response
// larger than GRPC_MAX_SEND_MSG_SIZE are refused with RESOURCE_EXHAUSTED; within them,
// both pass.
func TestGRPCMaxMessageSizes(t *testing.T) {
	t.Parallel()
	register := func(s *grpc.Server) {
		healthpb.RegisterHealthServer(s, health.NewServer())
		reflection.Register(s)
	}
	small := serveLimited(t, map[string]string{"GRPC_MAX_RECV_MSG_SIZE": "1024", "GRPC_MAX_SEND_MSG_SIZE": "1024"}, register)
	defaults := serveLimited(t, nil, register)

	big := &healthpb.HealthCheckRequest{Service: strings.Repeat("x", 2000)}
	if err := checkWith(t, small, big); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("2000-byte request with GRPC_MAX_RECV_MSG_SIZE=1024: %v, want RESOURCE_EXHAUSTED", err)
	}
	if err := checkWith(t, defaults, big); status.Code(err) != codes.NotFound { // no such service: it got through
		t.Errorf("2000-byte request with the default limit: %v, want NOT_FOUND from the health server", err)
	}

	// The descriptor of notify's admin API is several KB.
	if _, err := describe(t, small, "notify.v1.AdminService"); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("response over GRPC_MAX_SEND_MSG_SIZE=1024: %v, want RESOURCE_EXHAUSTED", err)
	}
	if n, err := describe(t, defaults, "notify.v1.AdminService"); err != nil || n <= 1024 {
		t.Errorf("the same response with the default limit: %d bytes, %v; want it, over 1024 bytes", n, err)
	}
}

func checkWith(t *testing.T, conn *grpc.ClientConn, req *healthpb.HealthCheckRequest) error {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	_, err := healthpb.NewHealthClient(conn).Check(ctx, req)
	return err
}

// describe asks server reflection for the file defining symbol and returns the size of
// the descriptors it answered with.
func describe(t *testing.T, conn *grpc.ClientConn, symbol string) (int, error) {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err != nil {
		return 0, err
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{
		MessageRequest: &reflectionpb.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: symbol},
	}); err != nil {
		return 0, err
	}
	resp, err := stream.Recv()
	if err != nil {
		return 0, err
	}
	if e := resp.GetErrorResponse(); e != nil {
		return 0, status.Error(codes.Code(e.GetErrorCode()), e.GetErrorMessage())
	}
	n := 0
	for _, fd := range resp.GetFileDescriptorResponse().GetFileDescriptorProto() {
		n += len(fd)
	}
	return n, nil
}

// TestGRPCMaxConcurrentStreams: with GRPC_MAX_CONCURRENT_STREAMS=1 a connection runs one
// call at a time: a second call waits while a stream is open and goes through once it
// ends.
func TestGRPCMaxConcurrentStreams(t *testing.T) {
	t.Parallel()
	conn := serveLimited(t, map[string]string{"GRPC_MAX_CONCURRENT_STREAMS": "1"}, func(s *grpc.Server) {
		healthpb.RegisterHealthServer(s, health.NewServer())
	})
	client := healthpb.NewHealthClient(conn)
	watchCtx, stopWatch := context.WithCancel(t.Context())
	defer stopWatch()
	watch, err := client.Watch(watchCtx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := watch.Recv(); err != nil { // the stream is open on the server
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	if _, err := client.Check(ctx, &healthpb.HealthCheckRequest{}); status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("second call while a stream is open on a 1-stream connection: %v, want it to wait (DEADLINE_EXCEEDED)", err)
	}

	stopWatch()
	if err := check(t.Context(), conn); err != nil {
		t.Errorf("call once the stream ended: %v", err)
	}
}
