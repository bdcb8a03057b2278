// Command producer serves notify's gRPC API (NotificationService, DeviceService,
// AdminService), owns the database schema and runs the outbox relay.
package main

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Getenv); err != nil {
		slog.Error("producer stopped", "err", err)
		os.Exit(1)
	}
}
