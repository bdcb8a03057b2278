package main

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"notify/pkg/logging"
	"notify/pkg/rabbit"
	"notify/services/producer/internal/tlsfiles"
)

// config is everything the producer reads from the environment.
type config struct {
	DatabaseURL string
	AMQPURL     string
	LogLevel    slog.Level
	MetricsAddr string
	GRPCAddr    string
	// GRPCTLS names the certificate files (GRPC_TLS_CERT_FILE, GRPC_TLS_KEY_FILE,
	// GRPC_TLS_CLIENT_CA_FILE); no files means plaintext.
	GRPCTLS tlsfiles.Files
	// GRPCMaxConnectionAge (GRPC_MAX_CONNECTION_AGE) closes client connections after this
	// long (gracefully, ±10%), so clients spread over replicas that started after them. 0
	// keeps connections forever.
	GRPCMaxConnectionAge time.Duration
	Topology             string        // AMQP_TOPOLOGY: exchange name and queue prefix
	ShutdownTimeout      time.Duration // drain of in-flight RPCs and the relay on SIGTERM

	OutboxBatchSize    int           // rows claimed and published per relay round
	OutboxPollInterval time.Duration // relay polling fallback when no NOTIFY arrives
	OutboxRetention    time.Duration // published outbox rows are deleted after this

	// APIKeyCacheTTL (API_KEY_CACHE_TTL) is how long a verified (or unknown) API key is
	// remembered: the time a revocation takes to reach the other replicas. 0 disables it.
	APIKeyCacheTTL time.Duration

	TokenStaleAfter    time.Duration // TOKEN_STALE_AFTER: devices not registered or seen for this long are deactivated
	TokenSweepInterval time.Duration // TOKEN_SWEEP_INTERVAL: how often the stale-token sweep runs
	TokenSweepBatch    int           // TOKEN_SWEEP_BATCH_SIZE: devices deactivated per statement

	RedriveAfter    time.Duration // REDRIVE_AFTER: a PENDING notification unchanged this long is re-driven
	RedriveInterval time.Duration // REDRIVE_INTERVAL: how often the re-drive looks for stuck notifications
	// RetryMaxDelay (RETRY_MAX_DELAY, the sender's and retrier's setting) is the longest
	// retry wait: RETRYING notifications are re-driven only after REDRIVE_AFTER plus this.
	RetryMaxDelay time.Duration
}

func loadConfig(getenv func(string) string) (config, error) {
	c := config{
		DatabaseURL: cmp.Or(getenv("DATABASE_URL"), "postgres://notify:notify@127.0.0.1:5432/notify?sslmode=disable"),
		AMQPURL:     cmp.Or(getenv("AMQP_URL"), "amqp://guest:guest@127.0.0.1:5672/"),
		MetricsAddr: cmp.Or(getenv("METRICS_ADDR"), "127.0.0.1:9101"),
		GRPCAddr:    cmp.Or(getenv("GRPC_ADDR"), "127.0.0.1:50051"),
		GRPCTLS: tlsfiles.Files{
			CertFile:     getenv("GRPC_TLS_CERT_FILE"),
			KeyFile:      getenv("GRPC_TLS_KEY_FILE"),
			ClientCAFile: getenv("GRPC_TLS_CLIENT_CA_FILE"),
		},
		Topology: cmp.Or(getenv("AMQP_TOPOLOGY"), rabbit.DefaultName),
	}
	var errs []error
	var err error
	if c.LogLevel, err = logging.ParseLevel(getenv("LOG_LEVEL")); err != nil {
		errs = append(errs, fmt.Errorf("LOG_LEVEL: %w", err))
	}
	bounded := func(name, def string, min, max time.Duration) time.Duration {
		d, err := parseDuration(cmp.Or(getenv(name), def))
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
		case d < min:
			errs = append(errs, fmt.Errorf("%s: %s is below the minimum %s", name, d, min))
		case max > 0 && d > max:
			errs = append(errs, fmt.Errorf("%s: %s is above the maximum %s", name, d, max))
		}
		return d
	}
	duration := func(name, def string, min time.Duration) time.Duration { return bounded(name, def, min, 0) }
	integer := func(name, def string, lo, hi int) int {
		n, err := strconv.Atoi(cmp.Or(getenv(name), def))
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
		case n < lo || n > hi:
			errs = append(errs, fmt.Errorf("%s: %d is outside %d..%d", name, n, lo, hi))
		}
		return n
	}
	c.ShutdownTimeout = duration("SHUTDOWN_TIMEOUT", "30s", 0)
	c.GRPCMaxConnectionAge = duration("GRPC_MAX_CONNECTION_AGE", "5m", 0)
	if c.GRPCMaxConnectionAge > 0 && c.GRPCMaxConnectionAge < time.Second {
		errs = append(errs, fmt.Errorf("GRPC_MAX_CONNECTION_AGE: %s; want 0 (never) or at least 1s", c.GRPCMaxConnectionAge))
	}
	if (c.GRPCTLS.CertFile == "") != (c.GRPCTLS.KeyFile == "") {
		errs = append(errs, errors.New("GRPC_TLS_CERT_FILE and GRPC_TLS_KEY_FILE: set both for TLS, or neither for plaintext"))
	}
	if c.GRPCTLS.ClientCAFile != "" && c.GRPCTLS.CertFile == "" {
		errs = append(errs, errors.New("GRPC_TLS_CLIENT_CA_FILE: mutual TLS also needs GRPC_TLS_CERT_FILE and GRPC_TLS_KEY_FILE"))
	}
	c.OutboxPollInterval = duration("OUTBOX_POLL_INTERVAL", "1s", 10*time.Millisecond)
	c.OutboxRetention = duration("OUTBOX_RETENTION", "24h", time.Minute)
	c.OutboxBatchSize = integer("OUTBOX_BATCH_SIZE", "500", 1, 10000)

	c.APIKeyCacheTTL = bounded("API_KEY_CACHE_TTL", "15s", 0, 5*time.Minute)
	c.TokenStaleAfter = duration("TOKEN_STALE_AFTER", "270d", 24*time.Hour)
	c.TokenSweepInterval = duration("TOKEN_SWEEP_INTERVAL", "1h", time.Second)
	c.TokenSweepBatch = integer("TOKEN_SWEEP_BATCH_SIZE", "1000", 1, 100_000)
	c.RedriveAfter = duration("REDRIVE_AFTER", "15m", time.Second)
	c.RedriveInterval = duration("REDRIVE_INTERVAL", "1m", 100*time.Millisecond)
	c.RetryMaxDelay = duration("RETRY_MAX_DELAY", "320s", time.Millisecond)
	return c, errors.Join(errs...)
}

// parseDuration is time.ParseDuration that also takes whole days ("270d"), the natural
// unit of token staleness.
func parseDuration(s string) (time.Duration, error) {
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(days)
		if err != nil || n < 0 || n > 100*365 {
			return 0, fmt.Errorf("invalid duration %q", s)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	return time.ParseDuration(s)
}
