// Command deadletter consumes notify.dead: it stores every dead letter in PostgreSQL first,
// then alerts Slack (or the log) about stored ones, grouped and rate-limited.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"notify/pkg/cli"
	"notify/pkg/envconfig"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Program{
		Name:          "deadletter",
		Summary:       "stores every dead letter in PostgreSQL, then alerts Slack (or the log), grouped and rate-limited",
		Serve:         func(ctx context.Context) error { return run(ctx, os.Getenv) },
		Env:           envconfig.Names(loadConfig),
		HealthDefault: defaultHTTPAddr,
		Traced:        true,
	}.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
