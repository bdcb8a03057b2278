package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// tlsOptions say how the connection to the producer is secured.
//
// Plaintext unless a TLS option is given, so that a producer started by 'make run' (which
// serves plaintext) needs no flags; --insecure says plaintext explicitly and beats TLS
// options that come from the environment.
type tlsOptions struct {
	caFile, certFile, keyFile, serverName string
	tls, insecure                         bool
}

// tlsEnv pairs each TLS flag with its environment variable.
var tlsEnv = []struct{ flag, env string }{
	{"ca-file", "NOTIFY_CA_FILE"},
	{"cert-file", "NOTIFY_CERT_FILE"},
	{"key-file", "NOTIFY_KEY_FILE"},
	{"tls-server-name", "NOTIFY_TLS_SERVER_NAME"},
	{"tls", "NOTIFY_TLS"},
}

func (o *tlsOptions) addFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.caFile, "ca-file", "", "verify the producer's certificate against the CA certificates in this PEM `file` (env NOTIFY_CA_FILE; turns TLS on)")
	fs.StringVar(&o.certFile, "cert-file", "", "client certificate PEM `file` for mTLS, with --key-file (env NOTIFY_CERT_FILE; turns TLS on)")
	fs.StringVar(&o.keyFile, "key-file", "", "private key PEM `file` of --cert-file (env NOTIFY_KEY_FILE)")
	fs.StringVar(&o.serverName, "tls-server-name", "", "`name` the producer's certificate must have, when it is not --addr's host (env NOTIFY_TLS_SERVER_NAME)")
	fs.BoolVar(&o.tls, "tls", false, "TLS with the system's CA certificates (env NOTIFY_TLS=true)")
	fs.BoolVar(&o.insecure, "insecure", false, "plaintext, even when TLS options are set in the environment (the default without TLS options)")
}

// settle fills the options not given as flags from the environment and checks them.
func (o *tlsOptions) settle(fs *pflag.FlagSet, getenv func(string) string) error {
	var tlsFlagGiven string
	for _, p := range tlsEnv {
		if fs.Changed(p.flag) {
			tlsFlagGiven = p.flag
			continue
		}
		v := getenv(p.env)
		if v == "" {
			continue
		}
		switch p.flag {
		case "ca-file":
			o.caFile = v
		case "cert-file":
			o.certFile = v
		case "key-file":
			o.keyFile = v
		case "tls-server-name":
			o.serverName = v
		case "tls":
			b, err := strconv.ParseBool(v)
			if err != nil {
				return usagef("NOTIFY_TLS=%q: want true or false", v)
			}
			o.tls = b
		}
	}
	if o.insecure && tlsFlagGiven != "" {
		return usagef("--insecure and --%s disagree: give one of them", tlsFlagGiven)
	}
	if !o.enabled() {
		return nil
	}
	if (o.certFile == "") != (o.keyFile == "") {
		return usagef("--cert-file and --key-file (NOTIFY_CERT_FILE, NOTIFY_KEY_FILE) go together: a client certificate needs its key")
	}
	return nil
}

// enabled reports whether the connection uses TLS.
func (o *tlsOptions) enabled() bool {
	return !o.insecure && (o.tls || o.caFile != "" || o.certFile != "" || o.keyFile != "" || o.serverName != "")
}

// credentials are the transport credentials the options describe.
func (o *tlsOptions) credentials() (credentials.TransportCredentials, error) {
	if !o.enabled() {
		return insecure.NewCredentials(), nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: o.serverName}
	if o.caFile != "" {
		pem, err := os.ReadFile(o.caFile)
		if err != nil {
			return nil, fmt.Errorf("--ca-file (NOTIFY_CA_FILE): %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--ca-file %s (NOTIFY_CA_FILE): no PEM certificate in it", o.caFile)
		}
		cfg.RootCAs = pool
	}
	if o.certFile != "" {
		cert, err := tls.LoadX509KeyPair(o.certFile, o.keyFile)
		if err != nil {
			return nil, fmt.Errorf("--cert-file %s, --key-file %s (NOTIFY_CERT_FILE, NOTIFY_KEY_FILE): %w", o.certFile, o.keyFile, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return credentials.NewTLS(cfg), nil
}

// client connects lazily, so usage errors never need a server.
func (c *cli) client() (*grpc.ClientConn, error) {
	if c.conn != nil {
		return c.conn, nil
	}
	creds, err := c.tls.credentials()
	if err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient(c.addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, usagef("--addr %q (NOTIFY_ADDR): %v", c.addr, err)
	}
	c.conn = conn
	return conn, nil
}

// unreachable explains a call that failed because no connection to the producer could be
// made: it names the address, the cause and what to set. A producer that answered (even
// with Unavailable, e.g. while its database is down) leaves the connection ready, and is
// reported as the server's answer instead.
func (c *cli) unreachable(st *status.Status) (string, bool) {
	if c.conn == nil || (st.Code() != codes.Unavailable && st.Code() != codes.DeadlineExceeded) {
		return "", false
	}
	if c.conn.GetState() == connectivity.Ready {
		return "", false
	}
	cause := connCause(st.Message())
	if st.Code() == codes.DeadlineExceeded {
		cause = fmt.Sprintf("no connection within --timeout %s", c.timeout)
	}
	hint := "set NOTIFY_ADDR or --addr"
	dialFailed := strings.HasPrefix(cause, "dial ") || strings.Contains(cause, "lookup ") || strings.Contains(cause, "name resolver")
	switch {
	case c.tls.enabled() && !dialFailed && c.tls.certFile == "":
		// With TLS 1.3 a server that requires a client certificate refuses it only after the
		// client's side of the handshake is done, so the cause the client sees varies
		// ("certificate required", a broken pipe, EOF): name the likely fix whatever it is.
		hint += "; if notify requires a client certificate (mTLS), give --cert-file and --key-file (NOTIFY_CERT_FILE, NOTIFY_KEY_FILE); check --ca-file (NOTIFY_CA_FILE), or --insecure if notify serves plaintext"
	case c.tls.enabled() && !dialFailed:
		hint += "; check --ca-file, --cert-file, --key-file (NOTIFY_CA_FILE, NOTIFY_CERT_FILE, NOTIFY_KEY_FILE), or --insecure if notify serves plaintext"
	case !dialFailed:
		hint += "; if notify serves TLS, give --ca-file (NOTIFY_CA_FILE) or --tls"
	}
	return fmt.Sprintf("cannot reach notify at %s: %s (%s)", c.addr, cause, hint), true
}

// connCause is the useful part of grpc's message for a failed connection, e.g.
// `connection error: desc = "transport: Error while dialing: dial tcp …: connection refused"`.
func connCause(msg string) string {
	msg = strings.TrimPrefix(msg, "connection error: desc = ")
	msg = strings.Trim(msg, `"`)
	msg = strings.TrimPrefix(msg, "transport: ")
	msg = strings.TrimPrefix(msg, "Error while dialing: ")
	msg = strings.TrimPrefix(msg, "authentication handshake failed: ")
	return msg
}
