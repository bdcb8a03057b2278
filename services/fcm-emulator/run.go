package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"notify/pkg/fcmemu"
	"notify/pkg/logging"
)

// shutdownGrace bounds how long in-flight sends may take to finish once ctx ends.
const shutdownGrace = 5 * time.Second

// run serves the emulator until ctx ends.
func run(ctx context.Context, getenv func(string) string) error {
	cfg, err := loadConfig(getenv)
	if err != nil {
		return fmt.Errorf("load config: %w", err)
	}
	log := logging.New(os.Stderr, "fcm-emulator", cfg.LogLevel)
	logging.Starting(log, cfg.Settings)
	defer logging.Stopping(ctx, log, shutdownGrace)()

	emu := fcmemu.New(fcmemu.Config{
		QuotaPerMinute:        cfg.QuotaPerMinute,
		ProjectQuotas:         cfg.ProjectQuotas,
		Latency:               cfg.Latency,
		RetryAfter:            cfg.RetryAfter,
		UnavailableRetryAfter: cfg.UnavailableRetryAfter,
		Logger:                log,
	})
	srv := &http.Server{
		Handler:           emu,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return fmt.Errorf("FCM_EMULATOR_ADDR: listen on %s: %w", cfg.Addr, err)
	}
	log.Info("fcm emulator listening", "addr", ln.Addr().String(),
		"quota_per_minute", cfg.QuotaPerMinute, "project_quotas", cfg.ProjectQuotas, "latency", cfg.Latency.String(),
		"retry_after", cfg.RetryAfter.String(), "unavailable_retry_after", cfg.UnavailableRetryAfter.String())

	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-served:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}

	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownGrace)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("shut down: %w", err)
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve: %w", err)
	}
	return nil
}
