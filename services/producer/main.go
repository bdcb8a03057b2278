// Command producer serves notify's gRPC API (NotificationService, DeviceService,
// AdminService), owns the database schema, runs the outbox relay and the periodic jobs.
//
// `producer keys create|list|revoke` manages API keys directly in DATABASE_URL: it is how
// the first admin key is made (see keysUsage).
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := 0
	switch {
	case len(os.Args) > 1 && os.Args[1] == "keys":
		code = runKeys(ctx, os.Args[2:], os.Getenv, os.Stdout, os.Stderr)
	case len(os.Args) > 1:
		fmt.Fprintf(os.Stderr, "producer: unknown command %q\n\nUsage:\n  producer              serve (configured by environment variables, see README.md)\n  producer keys ...     manage API keys in DATABASE_URL (run it alone for its usage)\n", os.Args[1])
		code = 2
	default:
		if err := run(ctx, os.Getenv); err != nil {
			slog.Error("producer stopped", "err", err)
			code = 1
		}
	}
	stop()
	os.Exit(code)
}
