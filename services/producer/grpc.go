package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	"notify/services/producer/internal/tlsfiles"
)

// Keepalive settings of the gRPC server. Clients pinging more often than
// keepaliveMinClientPing are told to go away (GOAWAY too_many_pings).
const (
	keepaliveTime          = time.Minute      // ping a client after this long without activity…
	keepaliveTimeout       = 20 * time.Second // …and close the connection if it does not answer
	keepaliveMinClientPing = 10 * time.Second
)

// grpcServerOptions returns the transport options cfg asks for: TLS (mutual when a client
// CA is set) from files reloaded on rotation, or plaintext with a warning; and keepalive
// with a maximum connection age.
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
