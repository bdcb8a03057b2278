package tlsfiles

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"notify/pkg/tlstest"
)

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

// serve runs a gRPC server with the health service over r's TLS and returns its address.
func serve(t *testing.T, r *Reloader) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer(grpc.Creds(credentials.NewTLS(r.ServerConfig())))
	healthpb.RegisterHealthServer(s, health.NewServer())
	go func() { _ = s.Serve(lis) }()
	t.Cleanup(s.Stop)
	return lis.Addr().String()
}

// call makes one health check over a new connection (so a new handshake) and returns the
// common name of the certificate the server presented.
func call(t *testing.T, addr string, creds credentials.TransportCredentials) (string, error) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	var p peer.Peer
	if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Peer(&p)); err != nil {
		return "", err
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		t.Fatalf("call succeeded without TLS: %T", p.AuthInfo)
	}
	return info.State.PeerCertificates[0].Subject.CommonName, nil
}

// clientTLS trusts ca and presents client, if any.
func clientTLS(ca *tlstest.CA, client *tlstest.Pair) credentials.TransportCredentials {
	cfg := &tls.Config{RootCAs: ca.Pool()}
	if client != nil {
		cert, err := tls.X509KeyPair(client.CertPEM, client.KeyPEM)
		if err != nil {
			panic(err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return credentials.NewTLS(cfg)
}

func wantRefused(t *testing.T, what string, cn string, err error) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: call succeeded (server %q), want it refused", what, cn)
	} else if status.Code(err) != codes.Unavailable {
		t.Errorf("%s: %v, want UNAVAILABLE", what, err)
	}
}

func TestTLS(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca := tlstest.NewCA(t, "test CA")
	certFile, keyFile := ca.Server(t, "localhost", "127.0.0.1").Write(t, dir, "server")
	r, err := New(Files{CertFile: certFile, KeyFile: keyFile}, 0, discard)
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, r)

	cn, err := call(t, addr, clientTLS(ca, nil))
	if err != nil || cn != "localhost" {
		t.Errorf("TLS client trusting the CA: server %q, %v; want localhost, nil", cn, err)
	}
	cn, err = call(t, addr, insecure.NewCredentials())
	wantRefused(t, "plaintext client", cn, err)
	cn, err = call(t, addr, clientTLS(tlstest.NewCA(t, "other CA"), nil))
	wantRefused(t, "client trusting another CA", cn, err)
}

func TestMutualTLS(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca := tlstest.NewCA(t, "server CA")
	clientCA := tlstest.NewCA(t, "client CA")
	certFile, keyFile := ca.Server(t).Write(t, dir, "server")
	r, err := New(Files{CertFile: certFile, KeyFile: keyFile, ClientCAFile: clientCA.WriteCA(t, dir, "clients.pem")}, 0, discard)
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, r)

	good := clientCA.Client(t, "orders-service")
	if _, err := call(t, addr, clientTLS(ca, &good)); err != nil {
		t.Errorf("client with a certificate from the client CA: %v", err)
	}
	cn, err := call(t, addr, clientTLS(ca, nil))
	wantRefused(t, "client without a certificate", cn, err)
	stranger := tlstest.NewCA(t, "stranger CA").Client(t, "mallory")
	cn, err = call(t, addr, clientTLS(ca, &stranger))
	wantRefused(t, "client with a certificate from another CA", cn, err)
	cn, err = call(t, addr, insecure.NewCredentials())
	wantRefused(t, "plaintext client", cn, err)
}

// TestRotation replaces the files under a running server: new connections get the new
// certificate and client CA, a bad replacement keeps the last good one in service.
func TestRotation(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca := tlstest.NewCA(t, "CA")
	clientCA1, clientCA2 := tlstest.NewCA(t, "client CA 1"), tlstest.NewCA(t, "client CA 2")
	client1, client2 := clientCA1.Client(t, "client-1"), clientCA2.Client(t, "client-2")
	certFile, keyFile := ca.Server(t, "old.example", "127.0.0.1").Write(t, dir, "server")
	caFile := clientCA1.WriteCA(t, dir, "clients.pem")
	logs := &syncBuffer{}
	r, err := New(Files{CertFile: certFile, KeyFile: keyFile, ClientCAFile: caFile}, time.Nanosecond,
		slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, r)
	if cn, err := call(t, addr, clientTLS(ca, &client1)); err != nil || cn != "old.example" {
		t.Fatalf("before rotation: server %q, %v; want old.example", cn, err)
	}

	// A held connection keeps working across the rotation.
	held, err := grpc.NewClient(addr, grpc.WithTransportCredentials(clientTLS(ca, &client1)))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if _, err := healthpb.NewHealthClient(held).Check(t.Context(), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}

	ca.Server(t, "new.example", "127.0.0.1").Write(t, dir, "server")
	clientCA2.WriteCA(t, dir, "clients.pem")
	if cn, err := call(t, addr, clientTLS(ca, &client2)); err != nil || cn != "new.example" {
		t.Errorf("after rotation, client of the new CA: server %q, %v; want new.example", cn, err)
	}
	cn, err := call(t, addr, clientTLS(ca, &client1))
	wantRefused(t, "after rotation, client of the replaced CA", cn, err)
	if _, err := healthpb.NewHealthClient(held).Check(t.Context(), &healthpb.HealthCheckRequest{}); err != nil {
		t.Errorf("connection made before the rotation: %v", err)
	}

	// A half-done rotation: a new certificate whose key has not been written yet.
	if err := os.WriteFile(certFile, ca.Server(t, "next.example", "127.0.0.1").CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if cn, err := call(t, addr, clientTLS(ca, &client2)); err != nil || cn != "new.example" {
			t.Errorf("with a mismatched key on disk: server %q, %v; want the last good certificate new.example", cn, err)
		}
	}
	if n := strings.Count(logs.String(), "do not load"); n != 1 {
		t.Errorf("bad files logged %d times, want once:\n%s", n, logs)
	}
	ca.Server(t, "next.example", "127.0.0.1").Write(t, dir, "server")
	if cn, err := call(t, addr, clientTLS(ca, &client2)); err != nil || cn != "next.example" {
		t.Errorf("after the rotation completed: server %q, %v; want next.example", cn, err)
	}
}

// TestCheckInterval: the files are read again only once the interval has passed.
func TestCheckInterval(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca := tlstest.NewCA(t, "CA")
	certFile, keyFile := ca.Server(t, "first").Write(t, dir, "server")
	r, err := New(Files{CertFile: certFile, KeyFile: keyFile}, time.Minute, discard)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	r.now = func() time.Time { return now }
	r.checked = now

	ca.Server(t, "second").Write(t, dir, "server")
	now = now.Add(59 * time.Second)
	if cn := r.Leaf().Subject.CommonName; cn != "first" {
		t.Errorf("before the interval: serving %q, want first", cn)
	}
	now = now.Add(time.Second)
	if cn := r.Leaf().Subject.CommonName; cn != "second" {
		t.Errorf("after the interval: serving %q, want second", cn)
	}
}

func TestNewRefusesBadFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca := tlstest.NewCA(t, "CA")
	certFile, keyFile := ca.Server(t).Write(t, dir, "server")
	_, otherKey := ca.Server(t).Write(t, dir, "other")
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		files Files
		want  string
	}{
		{"missing certificate", Files{CertFile: filepath.Join(dir, "missing.crt"), KeyFile: keyFile}, "missing.crt"},
		{"key of another certificate", Files{CertFile: certFile, KeyFile: otherKey}, "other.key"},
		{"client CA without certificates", Files{CertFile: certFile, KeyFile: keyFile, ClientCAFile: garbage}, "garbage.pem"},
	}
	for _, tt := range tests {
		if _, err := New(tt.files, 0, discard); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want an error naming %s", tt.name, err, tt.want)
		}
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
