package main

import (
	"log/slog"
	"strconv"
	"strings"
	"time"

	"notify/pkg/envconfig"
	"notify/pkg/rabbit"
	"notify/pkg/schema"
	"notify/services/producer/internal/apikey"
	"notify/services/producer/internal/server"
	"notify/services/producer/internal/tlsfiles"
)

// defaultHTTPAddr is where the service serves /readyz (and /metrics) when METRICS_ADDR is not set.
const defaultHTTPAddr = "127.0.0.1:9101"

// config is everything the producer reads from the environment.
type config struct {
	// Settings is every variable's effective value, secrets redacted: the start log.
	Settings slog.Value

	DatabaseURL string
	AMQPURL     string
	LogLevel    slog.Level
	GCPercent   int // GOGC unset: envconfig.DefaultGOGC, set by run; 0: the Go runtime's own
	MetricsAddr string
	GRPCAddr    string
	// GRPCTLS names the certificate files (GRPC_TLS_CERT_FILE, GRPC_TLS_KEY_FILE,
	// GRPC_TLS_CLIENT_CA_FILE); no files means plaintext.
	GRPCTLS tlsfiles.Files
	// GRPCMaxConnectionAge (GRPC_MAX_CONNECTION_AGE) closes client connections after this
	// long (gracefully, ±10%), so clients spread over replicas that started after them. 0
	// keeps connections forever.
	GRPCMaxConnectionAge time.Duration
	// GRPCLimits are the server's bounds on what one client may ask of it.
	GRPCLimits grpcLimits
	// Publish holds the per-API-key publish rate limits (PUBLISH_RATE_PER_KEY,
	// PUBLISH_RATE_PER_ADMIN_KEY, PUBLISH_BURST_PER_KEY), per replica.
	Publish         server.Limits
	Topology        string        // AMQP_TOPOLOGY: exchange name and queue prefix
	ShutdownTimeout time.Duration // drain of in-flight RPCs and the relay on SIGTERM

	// PublishBatch (PUBLISH_BATCH_SIZE, PUBLISH_BATCH_LINGER, PUBLISH_CONCURRENT_COMMITS)
	// tunes the group commit of concurrent Publish calls.
	PublishBatch server.GroupCommit

	OutboxBatchSize    int           // rows claimed and published per relay round
	OutboxConcurrency  int           // OUTBOX_CONCURRENCY: relay rounds that may overlap under a backlog
	OutboxPackSize     int           // OUTBOX_PACK_SIZE: send tasks of a round per message to the packed send queue; 1: none packed
	OutboxPollInterval time.Duration // relay polling fallback when no NOTIFY arrives
	OutboxRetention    time.Duration // published outbox rows are kept this long; 0 deletes them when published

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

	// MigrateOnStart (MIGRATE_ON_START, default true) applies pending migrations at start.
	// false leaves them to `producer migrate up` (a Kubernetes Job); the producer then
	// waits for the schema like the other services.
	MigrateOnStart bool

	// NotificationRetention (NOTIFICATION_RETENTION, default 30d) is how long finished
	// notifications, their deliveries, replays and dead letters are kept; 0 keeps them for
	// ever.
	NotificationRetention         time.Duration
	NotificationRetentionBatch    int           // NOTIFICATION_RETENTION_BATCH: rows deleted per statement
	NotificationRetentionInterval time.Duration // NOTIFICATION_RETENTION_INTERVAL: how often the retention job runs

	// Apps (APPS, comma-separated, default "default") are the app names Publish,
	// RegisterDevice(s) and CreateAPIKey accept: the names of the sender's and retrier's
	// FCM_APPS_FILE. The producer never holds FCM credentials, so it takes only the names.
	Apps []string
}

func loadConfig(getenv func(string) string) (config, error) {
	e := envconfig.New(getenv)
	c := config{
		DatabaseURL: schema.DatabaseURL(e),
		AMQPURL:     e.AMQPURL(),
		LogLevel:    e.LogLevel(),
		GCPercent:   e.GCPercent(),
		MetricsAddr: e.Addr("METRICS_ADDR", defaultHTTPAddr),
		GRPCAddr:    e.Addr("GRPC_ADDR", "127.0.0.1:50051"),
		GRPCTLS: tlsfiles.Files{
			CertFile:     e.String("GRPC_TLS_CERT_FILE", ""),
			KeyFile:      e.String("GRPC_TLS_KEY_FILE", ""),
			ClientCAFile: e.String("GRPC_TLS_CLIENT_CA_FILE", ""),
		},
		GRPCMaxConnectionAge: e.Duration("GRPC_MAX_CONNECTION_AGE", 5*time.Minute, 0),
		GRPCLimits: grpcLimits{
			RPCTimeout:           e.Duration("GRPC_RPC_TIMEOUT", 30*time.Second, 0),
			MaxRecvMsgSize:       e.Int("GRPC_MAX_RECV_MSG_SIZE", 8<<20, 1<<10, 1<<30),
			MaxSendMsgSize:       e.Int("GRPC_MAX_SEND_MSG_SIZE", 16<<20, 1<<10, 1<<30),
			MaxConcurrentStreams: e.Int("GRPC_MAX_CONCURRENT_STREAMS", 256, 1, 1<<20),
		},
		Publish: server.Limits{
			PerKey:      e.Int("PUBLISH_RATE_PER_KEY", 1000, 0, apikey.MaxLimit),
			PerAdminKey: e.Int("PUBLISH_RATE_PER_ADMIN_KEY", 0, 0, apikey.MaxLimit),
			Burst:       e.Int("PUBLISH_BURST_PER_KEY", 1000, 1, apikey.MaxLimit),
		},
		Topology: e.String("AMQP_TOPOLOGY", rabbit.DefaultName),

		ShutdownTimeout:    e.Duration("SHUTDOWN_TIMEOUT", 30*time.Second, 0),
		OutboxPollInterval: e.Duration("OUTBOX_POLL_INTERVAL", time.Second, 10*time.Millisecond),
		OutboxRetention:    e.Duration("OUTBOX_RETENTION", 0, 0),
		OutboxBatchSize:    e.Int("OUTBOX_BATCH_SIZE", 500, 1, 10000),
		OutboxConcurrency:  e.Int("OUTBOX_CONCURRENCY", 2, 1, 16),
		OutboxPackSize:     e.Int("OUTBOX_PACK_SIZE", 64, 1, 500),
		PublishBatch: server.GroupCommit{
			MaxBatch:   e.Int("PUBLISH_BATCH_SIZE", 100, 1, 1000),
			Linger:     e.DurationBetween("PUBLISH_BATCH_LINGER", 500*time.Microsecond, time.Microsecond, time.Second),
			MaxCommits: e.Int("PUBLISH_CONCURRENT_COMMITS", 2, 1, 64),
		},

		APIKeyCacheTTL:     e.DurationBetween("API_KEY_CACHE_TTL", 15*time.Second, 0, 5*time.Minute),
		TokenStaleAfter:    e.Duration("TOKEN_STALE_AFTER", 270*24*time.Hour, 24*time.Hour),
		TokenSweepInterval: e.Duration("TOKEN_SWEEP_INTERVAL", time.Hour, time.Second),
		TokenSweepBatch:    e.Int("TOKEN_SWEEP_BATCH_SIZE", 1000, 1, 100_000),
		RedriveAfter:       e.Duration("REDRIVE_AFTER", 15*time.Minute, time.Second),
		RedriveInterval:    e.Duration("REDRIVE_INTERVAL", time.Minute, 100*time.Millisecond),
		RetryMaxDelay:      e.Duration("RETRY_MAX_DELAY", 320*time.Second, time.Millisecond),

		NotificationRetention:         e.Duration("NOTIFICATION_RETENTION", 30*24*time.Hour, 0),
		NotificationRetentionBatch:    e.Int("NOTIFICATION_RETENTION_BATCH", 1000, 1, 100_000),
		NotificationRetentionInterval: e.Duration("NOTIFICATION_RETENTION_INTERVAL", time.Hour, time.Second),
	}
	for app := range strings.SplitSeq(e.String("APPS", schema.DefaultApp), ",") {
		app = strings.TrimSpace(app)
		if err := schema.CheckAppName(app); err != nil {
			e.Errorf("APPS", "app name %v", err)
			continue
		}
		c.Apps = append(c.Apps, app)
	}
	migrateOnStart := e.String("MIGRATE_ON_START", "true")
	var err error
	if c.MigrateOnStart, err = strconv.ParseBool(migrateOnStart); err != nil {
		e.Errorf("MIGRATE_ON_START", "%q is not true or false", migrateOnStart)
	}
	if c.NotificationRetention > 0 && c.NotificationRetention < time.Hour {
		e.Errorf("NOTIFICATION_RETENTION", "%s is below the minimum 1h (0 keeps everything)", c.NotificationRetention)
	}
	if c.GRPCLimits.RPCTimeout > 0 && c.GRPCLimits.RPCTimeout < 100*time.Millisecond {
		e.Errorf("GRPC_RPC_TIMEOUT", "%s; want 0 (unbounded) or at least 100ms", c.GRPCLimits.RPCTimeout)
	}
	if c.GRPCMaxConnectionAge > 0 && c.GRPCMaxConnectionAge < time.Second {
		e.Errorf("GRPC_MAX_CONNECTION_AGE", "%s; want 0 (never) or at least 1s", c.GRPCMaxConnectionAge)
	}
	if (c.GRPCTLS.CertFile == "") != (c.GRPCTLS.KeyFile == "") {
		e.Errorf("GRPC_TLS_CERT_FILE and GRPC_TLS_KEY_FILE", "set both for TLS, or neither for plaintext")
	}
	if c.GRPCTLS.ClientCAFile != "" && c.GRPCTLS.CertFile == "" {
		e.Errorf("GRPC_TLS_CLIENT_CA_FILE", "mutual TLS also needs GRPC_TLS_CERT_FILE and GRPC_TLS_KEY_FILE")
	}
	c.Settings = e.Settings()
	return c, e.Err()
}
