// Command sender consumes notify.send and delivers notifications through FCM in chunks of at
// most 500 tokens, recording every token's outcome.
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
		slog.Error("sender stopped", "err", err)
		os.Exit(1)
	}
}
