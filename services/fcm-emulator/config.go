package main

import (
	"log/slog"
	"time"

	"notify/pkg/envconfig"
)

// config is everything the emulator reads from the environment.
type config struct {
	Addr                  string        // FCM_EMULATOR_ADDR
	LogLevel              slog.Level    // LOG_LEVEL
	QuotaPerMinute        int           // FCM_EMULATOR_QUOTA_PER_MINUTE, 0 = unlimited
	Latency               time.Duration // FCM_EMULATOR_LATENCY
	RetryAfter            time.Duration // FCM_EMULATOR_RETRY_AFTER
	UnavailableRetryAfter time.Duration // FCM_EMULATOR_UNAVAILABLE_RETRY_AFTER, 0 = no header
}

// loadConfig reads the configuration through getenv, reporting every problem at once.
func loadConfig(getenv func(string) string) (config, error) {
	e := envconfig.New(getenv)
	c := config{
		Addr:                  e.Addr("FCM_EMULATOR_ADDR", "127.0.0.1:9099"),
		LogLevel:              e.LogLevel(),
		QuotaPerMinute:        e.Int("FCM_EMULATOR_QUOTA_PER_MINUTE", 0, 0, 1_000_000_000),
		Latency:               e.Duration("FCM_EMULATOR_LATENCY", 0, 0),
		RetryAfter:            e.Duration("FCM_EMULATOR_RETRY_AFTER", 30*time.Second, time.Second),
		UnavailableRetryAfter: e.Duration("FCM_EMULATOR_UNAVAILABLE_RETRY_AFTER", 0, 0),
	}
	return c, e.Err()
}
