package main

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"
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
	c := config{Addr: cmp.Or(getenv("FCM_EMULATOR_ADDR"), "127.0.0.1:9099")}
	var errs []error

	if err := c.LogLevel.UnmarshalText([]byte(cmp.Or(getenv("LOG_LEVEL"), "info"))); err != nil {
		errs = append(errs, fmt.Errorf("LOG_LEVEL: %w", err))
	}

	quota, err := strconv.Atoi(cmp.Or(getenv("FCM_EMULATOR_QUOTA_PER_MINUTE"), "0"))
	switch {
	case err != nil:
		errs = append(errs, fmt.Errorf("FCM_EMULATOR_QUOTA_PER_MINUTE: %w", err))
	case quota < 0:
		errs = append(errs, fmt.Errorf("FCM_EMULATOR_QUOTA_PER_MINUTE: %d is negative", quota))
	}
	c.QuotaPerMinute = quota

	duration := func(name, def string, least time.Duration) time.Duration {
		d, err := time.ParseDuration(cmp.Or(getenv(name), def))
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
		case d < least:
			errs = append(errs, fmt.Errorf("%s: %s is less than %s", name, d, least))
		}
		return d
	}
	c.Latency = duration("FCM_EMULATOR_LATENCY", "0s", 0)
	c.RetryAfter = duration("FCM_EMULATOR_RETRY_AFTER", "30s", time.Second)
	c.UnavailableRetryAfter = duration("FCM_EMULATOR_UNAVAILABLE_RETRY_AFTER", "0s", 0)

	return c, errors.Join(errs...)
}
