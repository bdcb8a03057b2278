package main

import (
	"log/slog"
	"time"

	"notify/pkg/delivery"
	"notify/pkg/envconfig"
	"notify/pkg/schema"
)

// defaultHTTPAddr is where the service serves /readyz (and /metrics) when METRICS_ADDR is not set.
const defaultHTTPAddr = "127.0.0.1:9103"

// config is everything the retrier reads from the environment.
type config struct {
	// Settings is every variable's effective value, secrets redacted: the start log.
	Settings slog.Value

	DatabaseURL string
	AMQPURL     string
	LogLevel    slog.Level
	GCPercent   int // GOGC unset: envconfig.DefaultGOGC, set by run; 0: the Go runtime's own
	MetricsAddr string
	// Delivery holds the FCM and retry settings the retrier shares with the sender.
	Delivery        delivery.Settings
	Workers         int           // RETRY_WORKERS: retry tasks handled at once
	Prefetch        int           // RETRY_PREFETCH: deliveries the broker sends ahead
	BatchSize       int           // RETRY_BATCH_SIZE: retry tasks one worker takes at once
	BatchLinger     time.Duration // RETRY_BATCH_LINGER: how long a batch waits to fill
	ShutdownTimeout time.Duration // SHUTDOWN_TIMEOUT: how long in-flight tasks may finish on SIGTERM
	// TaskTimeout (RETRY_TASK_TIMEOUT) bounds the handling of one batch of retry tasks
	// (retrier.Handler.WithTaskTimeout).
	TaskTimeout time.Duration
}

func loadConfig(getenv func(string) string) (config, error) {
	e := envconfig.New(getenv)
	c := config{
		DatabaseURL:     schema.DatabaseURL(e),
		AMQPURL:         e.AMQPURL(),
		LogLevel:        e.LogLevel(),
		GCPercent:       e.GCPercent(),
		MetricsAddr:     e.Addr("METRICS_ADDR", defaultHTTPAddr),
		Delivery:        delivery.LoadSettings(e),
		Workers:         e.Int("RETRY_WORKERS", 4, 1, 256),
		BatchSize:       e.Int("RETRY_BATCH_SIZE", 64, 1, 1000),
		BatchLinger:     e.Duration("RETRY_BATCH_LINGER", 5*time.Millisecond, time.Microsecond),
		ShutdownTimeout: e.Duration("SHUTDOWN_TIMEOUT", 30*time.Second, 0),
	}
	c.Prefetch = e.Int("RETRY_PREFETCH", 2*c.Workers*c.BatchSize, 1, 65535)
	c.TaskTimeout = e.Duration("RETRY_TASK_TIMEOUT", c.Delivery.TaskTimeout(), time.Second)
	c.Settings = e.Settings()
	return c, e.Err()
}
