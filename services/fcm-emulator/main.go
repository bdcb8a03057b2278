// Command fcm-emulator serves a local stand-in for the FCM HTTP v1 API; see README.md.
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
		Name:          "fcm-emulator",
		Summary:       "serves a local stand-in for the FCM HTTP v1 API, for development and tests",
		Serve:         func(ctx context.Context) error { return run(ctx, os.Getenv) },
		Env:           envconfig.Names(loadConfig),
		HealthVar:     "FCM_EMULATOR_ADDR",
		HealthDefault: defaultHTTPAddr,
	}.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
