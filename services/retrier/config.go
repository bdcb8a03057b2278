package main

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"notify/pkg/delivery"
	"notify/pkg/logging"
)

// config is everything the retrier reads from the environment.
type config struct {
	DatabaseURL string
	AMQPURL     string
	LogLevel    slog.Level
	MetricsAddr string
	Delivery    delivery.Settings

	Workers         int           // RETRY_WORKERS: retry tasks handled at once
	Prefetch        int           // RETRY_PREFETCH: deliveries the broker sends ahead
	ShutdownTimeout time.Duration // SHUTDOWN_TIMEOUT: how long in-flight tasks may finish on SIGTERM
}

func loadConfig(getenv func(string) string) (config, error) {
	c := config{
		DatabaseURL: cmp.Or(getenv("DATABASE_URL"), "postgres://notify:notify@127.0.0.1:5432/notify?sslmode=disable"),
		AMQPURL:     cmp.Or(getenv("AMQP_URL"), "amqp://guest:guest@127.0.0.1:5672/"),
		MetricsAddr: cmp.Or(getenv("METRICS_ADDR"), "127.0.0.1:9103"),
	}
	var errs []error
	var err error
	if c.LogLevel, err = logging.ParseLevel(getenv("LOG_LEVEL")); err != nil {
		errs = append(errs, fmt.Errorf("LOG_LEVEL: %w", err))
	}
	if c.Delivery, err = delivery.LoadSettings(getenv); err != nil {
		errs = append(errs, err)
	}
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
	c.Workers = integer("RETRY_WORKERS", "4", 1, 256)
	c.Prefetch = integer("RETRY_PREFETCH", strconv.Itoa(2*c.Workers), 1, 10000)
	if c.ShutdownTimeout, err = time.ParseDuration(cmp.Or(getenv("SHUTDOWN_TIMEOUT"), "30s")); err != nil {
		errs = append(errs, fmt.Errorf("SHUTDOWN_TIMEOUT: %w", err))
	}
	return c, errors.Join(errs...)
}
