// Command fcm-emulator serves a local stand-in for the FCM HTTP v1 API; see README.md.
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
		slog.Error("fcm-emulator stopped", "err", err)
		os.Exit(1)
	}
}
