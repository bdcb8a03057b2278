// Command retrier consumes notify.retry and sends again to the tokens that failed transiently,
// with exponential backoff between attempts through per-delay wait queues.
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
		Name:          "retrier",
		Summary:       "consumes notify.retry and sends again to the tokens that failed transiently, with backoff",
		Serve:         func(ctx context.Context) error { return run(ctx, os.Getenv) },
		Env:           envconfig.Names(loadConfig),
		HealthDefault: defaultHTTPAddr,
		Traced:        true,
	}.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
