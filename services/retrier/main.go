// Command retrier consumes notify.retry and sends again to the tokens that failed transiently,
// with exponential backoff between attempts through per-delay wait queues.
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
		slog.Error("retrier stopped", "err", err)
		os.Exit(1)
	}
}
