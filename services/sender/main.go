// Command sender consumes notify.send and delivers notifications through FCM in chunks of at
// most 500 tokens, recording every token's outcome.
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
		Name:          "sender",
		Summary:       "consumes notify.send and delivers notifications through FCM in chunks of at most 500 tokens",
		Serve:         func(ctx context.Context) error { return run(ctx, os.Getenv) },
		Env:           envconfig.Names(loadConfig),
		HealthDefault: defaultHTTPAddr,
		Traced:        true,
	}.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
