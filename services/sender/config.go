package main

import (
	"log/slog"
	"time"

	"notify/pkg/delivery"
	"notify/pkg/envconfig"
	"notify/pkg/schema"
)

// defaultHTTPAddr is where the service serves /readyz (and /metrics) when METRICS_ADDR is not set.
const defaultHTTPAddr = "127.0.0.1:9102"

// config is everything the sender reads from the environment.
type config struct {
	// Settings is every variable's effective value, secrets redacted: the start log.
	Settings slog.Value

	DatabaseURL string
	AMQPURL     string
	LogLevel    slog.Level
	GCPercent   int // GOGC unset: envconfig.DefaultGOGC, set by run; 0: the Go runtime's own
	MetricsAddr string
	// Delivery holds the FCM and retry settings the sender shares with the retrier.
	Delivery         delivery.Settings
	Workers          int           // SEND_WORKERS: send tasks handled at once
	Prefetch         int           // SEND_PREFETCH: deliveries the broker sends ahead
	BatchSize        int           // SEND_BATCH_SIZE: send tasks one worker takes at once
	BatchLinger      time.Duration // SEND_BATCH_LINGER: how long a batch waits to fill
	ChunkConcurrency int           // SEND_CHUNK_CONCURRENCY: chunks of one notification in flight
	ShutdownTimeout  time.Duration // SHUTDOWN_TIMEOUT: how long in-flight tasks may finish on SIGTERM
	// TaskTimeout (SEND_TASK_TIMEOUT) bounds each step of a send task: a batch's small
	// notifications, or one chunk of a large one (sender.Handler.WithTaskTimeout).
	TaskTimeout time.Duration
}

func loadConfig(getenv func(string) string) (config, error) {
	e := envconfig.New(getenv)
	c := config{
		DatabaseURL:      schema.DatabaseURL(e),
		AMQPURL:          e.AMQPURL(),
		LogLevel:         e.LogLevel(),
		GCPercent:        e.GCPercent(),
		MetricsAddr:      e.Addr("METRICS_ADDR", defaultHTTPAddr),
		Delivery:         delivery.LoadSettings(e),
		Workers:          e.Int("SEND_WORKERS", 4, 1, 256),
		BatchSize:        e.Int("SEND_BATCH_SIZE", 64, 1, 1000),
		BatchLinger:      e.Duration("SEND_BATCH_LINGER", 5*time.Millisecond, time.Microsecond),
		ChunkConcurrency: e.Int("SEND_CHUNK_CONCURRENCY", 8, 1, 64),
		ShutdownTimeout:  e.Duration("SHUTDOWN_TIMEOUT", 30*time.Second, 0),
	}
	c.Prefetch = e.Int("SEND_PREFETCH", 2*c.Workers*c.BatchSize, 1, 65535)
	c.TaskTimeout = e.Duration("SEND_TASK_TIMEOUT", c.Delivery.TaskTimeout(), time.Second)
	c.Settings = e.Settings()
	return c, e.Err()
}
