package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
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

// pki is a test certificate authority and the files it issued, in a temporary directory.
type pki struct {
	dir    string
	cert   *x509.Certificate
	key    *ecdsa.PrivateKey
	CAFile string
}

func newPKI(t *testing.T, name string) *pki {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	p := &pki{dir: t.TempDir(), cert: cert, key: key}
	p.CAFile = p.write(t, name+"-ca.pem", "CERTIFICATE", der)
	return p
}

func (p *pki) write(t *testing.T, name, blockType string, der []byte) string {
	t.Helper()
	path := filepath.Join(p.dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: blockType, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// issue makes a certificate for cn (a server certificate for 127.0.0.1 and localhost, or a
// client certificate) and returns its certificate and key files and the loaded pair.
func (p *pki) issue(t *testing.T, cn string, server bool) (certFile, keyFile string, pair tls.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
		tmpl.DNSNames = []string{"localhost", "notify.test"}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.cert, &key.PublicKey, p.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile = p.write(t, cn+".pem", "CERTIFICATE", der)
	keyFile = p.write(t, cn+"-key.pem", "PRIVATE KEY", keyDER)
	pair, err = tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile, pair
}

func TestTLS(t *testing.T) {
	t.Parallel()
	serverCA, otherCA, clientCA := newPKI(t, "server"), newPKI(t, "other"), newPKI(t, "clients")
	_, _, serverPair := serverCA.issue(t, "producer", true)
	clientCert, clientKey, _ := clientCA.issue(t, "ops-laptop", false)
	strangerCert, strangerKey, _ := otherCA.issue(t, "stranger", false)

	_, tlsAddr := startFake(t, grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{serverPair}})))
	clientCAs := x509.NewCertPool()
	clientCAs.AddCert(clientCA.cert)
	mtls, mtlsAddr := startFake(t, grpc.Creds(credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{serverPair}, ClientCAs: clientCAs, ClientAuth: tls.RequireAndVerifyClientCert,
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
		{name: "CA file", addr: tlsAddr, args: []string{"--ca-file", serverCA.CAFile}, code: exitOK},
		{name: "CA file from the environment", addr: tlsAddr, env: map[string]string{"NOTIFY_CA_FILE": serverCA.CAFile}, code: exitOK},
		{name: "server name other than the address", addr: tlsAddr, args: []string{"--ca-file", serverCA.CAFile, "--tls-server-name", "notify.test"}, code: exitOK},
		{
			name: "wrong CA", addr: tlsAddr, args: []string{"--ca-file", otherCA.CAFile}, code: exitFailure,
			stderr: []string{"cannot reach notify at " + tlsAddr, "certificate signed by unknown authority", "--ca-file"},
		},
		{
			name: "wrong server name", addr: tlsAddr, args: []string{"--ca-file", serverCA.CAFile, "--tls-server-name", "elsewhere.test"}, code: exitFailure,
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
			name: "TLS client, plaintext server", addr: plainAddr, args: []string{"--ca-file", serverCA.CAFile}, code: exitFailure,
			stderr: []string{"cannot reach notify at " + plainAddr, "--insecure if notify serves plaintext"},
		},
		{
			name: "--insecure beats TLS settings in the environment", addr: plainAddr, args: []string{"--insecure"},
			env: map[string]string{"NOTIFY_CA_FILE": serverCA.CAFile, "NOTIFY_TLS": "true"}, code: exitOK,
		},
		{name: "mTLS", addr: mtlsAddr, args: []string{"--ca-file", serverCA.CAFile, "--cert-file", clientCert, "--key-file", clientKey}, code: exitOK},
		{
			name: "mTLS from the environment", addr: mtlsAddr, code: exitOK,
			env: map[string]string{"NOTIFY_CA_FILE": serverCA.CAFile, "NOTIFY_CERT_FILE": clientCert, "NOTIFY_KEY_FILE": clientKey},
		},
		{
			name: "mTLS without a client certificate", addr: mtlsAddr, args: []string{"--ca-file", serverCA.CAFile}, code: exitFailure,
			stderr: []string{"cannot reach notify at " + mtlsAddr, "certificate required", "--cert-file"},
		},
		{
			name: "mTLS with a certificate of another CA", addr: mtlsAddr, code: exitFailure,
			args: []string{"--ca-file", serverCA.CAFile, "--cert-file", strangerCert, "--key-file", strangerKey},
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
			name: "key of another certificate", addr: mtlsAddr, args: []string{"--ca-file", serverCA.CAFile, "--cert-file", clientCert, "--key-file", strangerKey},
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
