// Command producer serves notify's gRPC API (NotificationService, DeviceService,
// AdminService), owns the database schema, runs the outbox relay and the periodic jobs.
//
// `producer keys create|list|revoke` manages API keys directly in DATABASE_URL: it is how
// the first admin key is made (see keysUsage).
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
	code := 0
	if len(os.Args) > 1 && os.Args[1] == "keys" {
		code = runKeys(ctx, os.Args[2:], os.Getenv, os.Stdout, os.Stderr)
	} else if err := run(ctx, os.Getenv); err != nil {
		slog.Error("producer stopped", "err", err)
		code = 1
	}
	stop()
	os.Exit(code)
}
