// Command deadletter consumes notify.dead: it stores every dead letter in PostgreSQL first,
// then alerts Slack (or the log) about stored ones, grouped and rate-limited.
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
		slog.Error("deadletter stopped", "err", err)
		os.Exit(1)
	}
}
