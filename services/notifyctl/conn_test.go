package main

import (
	"crypto/tls"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"notify/pkg/tlstest"
)

func TestUnreachableNamesTheAddressAndWhatToSet(t *testing.T) {
	t.Parallel()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close() // nothing listens there any more

	for _, e := range []map[string]string{
		{"NOTIFY_ADDR": addr, "NOTIFY_API_KEY": "admin"},
		{"NOTIFY_ADDR": "127.0.0.1:1", "NOTIFY_API_KEY": "admin"}, // overridden by --addr below
	} {
		r := mustCtl(t, exitFailure, e, "list", "--addr", addr)
		want := "notifyctl: cannot reach notify at " + addr + ": dial tcp " + addr + ": connect: connection refused (set NOTIFY_ADDR or --addr)\n"
		if r.stderr != want {
			t.Errorf("stderr:\n%s\nwant:\n%s", r.stderr, want)
		}
	}
	// A name that does not resolve.
	r := mustCtl(t, exitFailure, env("no-such-host.invalid:50051", "admin"), "keys", "list")
	if !strings.Contains(r.stderr, "cannot reach notify at no-such-host.invalid:50051: ") || !strings.Contains(r.stderr, "(set NOTIFY_ADDR or --addr") {
		t.Errorf("stderr:\n%s", r.stderr)
	}
}

func TestTLS(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	serverCA, otherCA, clientCA := tlstest.NewCA(t, "server"), tlstest.NewCA(t, "other"), tlstest.NewCA(t, "clients")
	serverCAFile, otherCAFile := serverCA.WriteCA(t, dir, "server-ca.pem"), otherCA.WriteCA(t, dir, "other-ca.pem")
	server := serverCA.Server(t, "127.0.0.1", "localhost", "notify.test")
	serverPair, err := tls.X509KeyPair(server.CertPEM, server.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	clientCert, clientKey := clientCA.Client(t, "ops-laptop").Write(t, dir, "ops-laptop")
	strangerCert, strangerKey := otherCA.Client(t, "stranger").Write(t, dir, "stranger")

	_, tlsAddr := startFake(t, grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{serverPair}})))
	mtls, mtlsAddr := startFake(t, grpc.Creds(credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{serverPair}, ClientCAs: clientCA.Pool(), ClientAuth: tls.RequireAndVerifyClientCert,
	})))
	_, plainAddr := startFake(t)

	tests := []struct {
		name   string
		addr   string
		env    map[string]string
		args   []string
		code   int
		stderr []string
	}{
		{name: "CA file", addr: tlsAddr, args: []string{"--ca-file", serverCAFile}, code: exitOK},
		{name: "CA file from the environment", addr: tlsAddr, env: map[string]string{"NOTIFY_CA_FILE": serverCAFile}, code: exitOK},
		{name: "server name other than the address", addr: tlsAddr, args: []string{"--ca-file", serverCAFile, "--tls-server-name", "notify.test"}, code: exitOK},
		{
			name: "wrong CA", addr: tlsAddr, args: []string{"--ca-file", otherCAFile}, code: exitFailure,
			stderr: []string{"cannot reach notify at " + tlsAddr, "certificate signed by unknown authority", "--ca-file"},
		},
		{
			name: "wrong server name", addr: tlsAddr, args: []string{"--ca-file", serverCAFile, "--tls-server-name", "elsewhere.test"}, code: exitFailure,
			stderr: []string{"cannot reach notify at " + tlsAddr, "elsewhere.test"},
		},
		{
			name: "system roots do not know a private CA", addr: tlsAddr, args: []string{"--tls"}, code: exitFailure,
			stderr: []string{"cannot reach notify at " + tlsAddr, "certificate signed by unknown authority"},
		},
		{
			name: "plaintext client, TLS server", addr: tlsAddr, code: exitFailure,
			stderr: []string{"cannot reach notify at " + tlsAddr, "if notify serves TLS, give --ca-file (NOTIFY_CA_FILE) or --tls"},
		},
		{
			name: "TLS client, plaintext server", addr: plainAddr, args: []string{"--ca-file", serverCAFile}, code: exitFailure,
			stderr: []string{"cannot reach notify at " + plainAddr, "--insecure if notify serves plaintext"},
		},
		{
			name: "--insecure beats TLS settings in the environment", addr: plainAddr, args: []string{"--insecure"},
			env: map[string]string{"NOTIFY_CA_FILE": serverCAFile, "NOTIFY_TLS": "true"}, code: exitOK,
		},
		{name: "mTLS", addr: mtlsAddr, args: []string{"--ca-file", serverCAFile, "--cert-file", clientCert, "--key-file", clientKey}, code: exitOK},
		{
			name: "mTLS from the environment", addr: mtlsAddr, code: exitOK,
			env: map[string]string{"NOTIFY_CA_FILE": serverCAFile, "NOTIFY_CERT_FILE": clientCert, "NOTIFY_KEY_FILE": clientKey},
		},
		{
			name: "mTLS without a client certificate", addr: mtlsAddr, args: []string{"--ca-file", serverCAFile}, code: exitFailure,
			// The server's alert may arrive before or after the client writes: the cause varies,
			// the hint does not.
			stderr: []string{"cannot reach notify at " + mtlsAddr, "if notify requires a client certificate (mTLS), give --cert-file"},
		},
		{
			name: "mTLS with a certificate of another CA", addr: mtlsAddr, code: exitFailure,
			args: []string{"--ca-file", serverCAFile, "--cert-file", strangerCert, "--key-file", strangerKey},
			// The server's alert may arrive before or after the client writes: the cause varies.
			stderr: []string{"cannot reach notify at " + mtlsAddr, "--cert-file"},
		},
		{
			name: "CA file missing", addr: tlsAddr, args: []string{"--ca-file", filepath.Join(t.TempDir(), "nope.pem")}, code: exitFailure,
			stderr: []string{"--ca-file (NOTIFY_CA_FILE): open ", "no such file"},
		},
		{
			name: "CA file without a certificate", addr: tlsAddr, args: []string{"--ca-file", clientKey}, code: exitFailure,
			stderr: []string{"no PEM certificate in it"},
		},
		{
			name: "key of another certificate", addr: mtlsAddr, args: []string{"--ca-file", serverCAFile, "--cert-file", clientCert, "--key-file", strangerKey},
			code: exitFailure, stderr: []string{"--cert-file " + clientCert + ", --key-file " + strangerKey, "private key does not match"},
		},
	}
	// Parallel cases in a group, so that the check below runs after them.
	t.Run("cases", func(t *testing.T) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				e := env(tt.addr, "admin")
				for k, v := range tt.env {
					e[k] = v
				}
				r := mustCtl(t, tt.code, e, append([]string{"keys", "list"}, tt.args...)...)
				for _, s := range tt.stderr {
					if !strings.Contains(r.stderr, s) {
						t.Errorf("stderr does not say %q:\n%s", s, r.stderr)
					}
				}
				if tt.code == exitOK && !strings.Contains(r.stdout, "ops") {
					t.Errorf("keys list over TLS printed:\n%s", r.stdout)
				}
			})
		}
	})

	// The mTLS server saw the client certificate on every call that got through.
	mtls.mu.Lock()
	defer mtls.mu.Unlock()
	if len(mtls.clientNames) == 0 || slices.ContainsFunc(mtls.clientNames, func(n string) bool { return n != "ops-laptop" }) {
		t.Errorf("client certificates seen by the mTLS server: %q, want only ops-laptop", mtls.clientNames)
	}
}
