package main

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"notify/pkg/logging"
	"notify/pkg/rabbit"
)

// config is everything the producer reads from the environment.
type config struct {
	DatabaseURL     string
	AMQPURL         string
	LogLevel        slog.Level
	MetricsAddr     string
	GRPCAddr        string
	Topology        string        // AMQP_TOPOLOGY: exchange name and queue prefix
	ShutdownTimeout time.Duration // drain of in-flight RPCs and the relay on SIGTERM

	OutboxBatchSize    int           // rows claimed and published per relay round
	OutboxPollInterval time.Duration // relay polling fallback when no NOTIFY arrives
	OutboxRetention    time.Duration // published outbox rows are deleted after this
}

func loadConfig(getenv func(string) string) (config, error) {
	c := config{
		DatabaseURL: cmp.Or(getenv("DATABASE_URL"), "postgres://notify:notify@127.0.0.1:5432/notify?sslmode=disable"),
		AMQPURL:     cmp.Or(getenv("AMQP_URL"), "amqp://guest:guest@127.0.0.1:5672/"),
		MetricsAddr: cmp.Or(getenv("METRICS_ADDR"), "127.0.0.1:9101"),
		GRPCAddr:    cmp.Or(getenv("GRPC_ADDR"), "127.0.0.1:50051"),
		Topology:    cmp.Or(getenv("AMQP_TOPOLOGY"), rabbit.DefaultName),
	}
	var errs []error
	var err error
	if c.LogLevel, err = logging.ParseLevel(getenv("LOG_LEVEL")); err != nil {
		errs = append(errs, fmt.Errorf("LOG_LEVEL: %w", err))
	}
	duration := func(name, def string, min time.Duration) time.Duration {
		d, err := time.ParseDuration(cmp.Or(getenv(name), def))
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
		case d < min:
			errs = append(errs, fmt.Errorf("%s: %s is below the minimum %s", name, d, min))
		}
		return d
	}
	c.ShutdownTimeout = duration("SHUTDOWN_TIMEOUT", "30s", 0)
	c.OutboxPollInterval = duration("OUTBOX_POLL_INTERVAL", "1s", 10*time.Millisecond)
	c.OutboxRetention = duration("OUTBOX_RETENTION", "24h", time.Minute)

	n, err := strconv.Atoi(cmp.Or(getenv("OUTBOX_BATCH_SIZE"), "500"))
	switch {
	case err != nil:
		errs = append(errs, fmt.Errorf("OUTBOX_BATCH_SIZE: %w", err))
	case n < 1 || n > 10000:
		errs = append(errs, fmt.Errorf("OUTBOX_BATCH_SIZE: %d is outside 1..10000", n))
	}
	c.OutboxBatchSize = n
	return c, errors.Join(errs...)
}
