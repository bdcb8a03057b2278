package e2e

import (
	"context"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	notifyv1 "notify/proto/gen/notify/v1"
)

// get requests path from the service's metrics server and returns the status and body; a
// request that fails outright is status 0.
func (p *proc) get(t *testing.T, path string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + p.metrics + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// expectUnready waits until every path in paths answers 503 with every want in its body,
// and checks that /livez answers 200 meanwhile.
func expectUnready(t *testing.T, p *proc, want ...string) {
	t.Helper()
	var status int
	var body string
	deadline := time.Now().Add(30 * time.Second)
	for {
		status, body = p.get(t, "/readyz")
		ok := status == http.StatusServiceUnavailable
		for _, w := range want {
			ok = ok && strings.Contains(body, w)
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: /readyz = %d %q, want 503 naming %q\n%s", p.name, status, body, want, p.tail(20))
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("%s /readyz: %d\n%s", p.name, status, body)
	if status, body := p.get(t, "/healthz"); status != http.StatusServiceUnavailable {
		t.Errorf("%s: /healthz = %d %q, want 503 like /readyz", p.name, status, body)
	}
	if status, body := p.get(t, "/livez"); status != http.StatusOK {
		t.Errorf("%s: /livez = %d %q, want 200: the process works", p.name, status, body)
	}
}

// TestHealthDeadBroker runs every service against a closed broker port: each is live, not
// ready, and says why; the producer's gRPC health service agrees.
func TestHealthDeadBroker(t *testing.T) {
	s := newStack(t)
	env := map[string]string{"AMQP_URL": replaceHost(s.amqpURL, freeAddr(t)), "FCM_ENDPOINT": "http://127.0.0.1:1/v1"}
	for _, name := range []string{"producer", "sender", "retrier", "deadletter"} {
		p := s.startUntil(name, env, "/livez")
		want := []string{"database: ok", "rabbitmq: not connected", "connection refused"}
		if name != "producer" {
			want = append(want, "consumer: not consuming")
		}
		expectUnready(t, p, want...)
	}
	expectGRPCHealth(t, s.grpcAddr, healthpb.HealthCheckResponse_NOT_SERVING)
}

// TestHealthBrokerReturns starts the producer and a sender while the broker is unreachable
// (through a proxy refusing connections) and expects them ready, and the gRPC health
// SERVING, once it is reachable.
func TestHealthBrokerReturns(t *testing.T) {
	s := newStack(t)
	u, err := urlHost(s.amqpURL)
	if err != nil {
		t.Fatal(err)
	}
	px := newProxy(t, u)
	px.setDown(true)
	env := map[string]string{"AMQP_URL": replaceHost(s.amqpURL, px.addr()), "FCM_ENDPOINT": "http://127.0.0.1:1/v1"}
	producer := s.startUntil("producer", env, "/livez")
	sender := s.startUntil("sender", env, "/livez")
	expectUnready(t, producer, "rabbitmq: not connected")
	expectUnready(t, sender, "rabbitmq: not connected", "consumer: not consuming")
	expectGRPCHealth(t, s.grpcAddr, healthpb.HealthCheckResponse_NOT_SERVING)

	px.setDown(false)
	for _, p := range []*proc{producer, sender} {
		waitFor(t, 30*time.Second, p.name+" ready once the broker is reachable", func() bool {
			status, _ := p.get(t, "/readyz")
			return status == http.StatusOK
		})
	}
	expectGRPCHealth(t, s.grpcAddr, healthpb.HealthCheckResponse_SERVING)
}

// expectGRPCHealth waits until the producer's grpc.health.v1 service reports want for the
// server as a whole and for each notify service.
func expectGRPCHealth(t *testing.T, addr string, want healthpb.HealthCheckResponse_ServingStatus) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	health := healthpb.NewHealthClient(conn)
	for _, name := range []string{"", notifyv1.NotificationService_ServiceDesc.ServiceName,
		notifyv1.DeviceService_ServiceDesc.ServiceName, notifyv1.AdminService_ServiceDesc.ServiceName} {
		var got string
		waitFor(t, 30*time.Second, "gRPC health of "+strconv.Quote(name)+" "+want.String(), func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			resp, err := health.Check(ctx, &healthpb.HealthCheckRequest{Service: name})
			if err != nil {
				got = err.Error()
				return false
			}
			got = resp.GetStatus().String()
			return resp.GetStatus() == want
		})
		t.Logf("gRPC health %q: %s", name, got)
	}
}

// TestHealthDeadDatabase runs every service against a closed database port: each is live,
// not ready, and says why.
func TestHealthDeadDatabase(t *testing.T) {
	s := newStack(t)
	deadURL := replaceHost(s.db.URL, freeAddr(t))
	env := map[string]string{"DATABASE_URL": deadURL, "FCM_ENDPOINT": "http://127.0.0.1:1/v1"}
	for _, name := range []string{"producer", "sender", "retrier", "deadletter"} {
		p := s.startUntil(name, env, "/livez")
		expectUnready(t, p, "database: ", "connection refused")
	}
}
