package main

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"notify/pkg/delivery"
	"notify/pkg/rabbit"
	"notify/services/retrier/internal/retrier"
)

// run consumes the retry queue until ctx ends.
func run(ctx context.Context, getenv func(string) string) error {
	cfg, err := loadConfig(getenv)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	return delivery.RunService(ctx, cfg.ServiceConfig, rabbit.Topology.RetryQueue,
		func(store *delivery.Store, d *delivery.Deliverer, log *slog.Logger, reg prometheus.Registerer) rabbit.Handler {
			return retrier.NewHandler(store, d, log, reg).Handle
		})
}
