// Command producer serves notify's gRPC API (NotificationService, DeviceService,
// AdminService), owns the database schema, runs the outbox relay and the periodic jobs.
//
// `producer keys create|list|revoke` manages API keys directly in DATABASE_URL: it is how
// the first admin key is made (see keysUsage). `producer migrate up|status` applies or lists
// the database migrations (see migrateUsage).
package main

import (
	"context"
	"io"
	"os"
	"os/signal"
	"syscall"

	"notify/pkg/cli"
	"notify/pkg/envconfig"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := program(os.Getenv).Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// program is the producer's command line: serving, and the subcommands in its table.
func program(getenv func(string) string) cli.Program {
	return cli.Program{
		Name:          "producer",
		Summary:       "serves notify's gRPC API, runs the outbox relay and the periodic jobs",
		Serve:         func(ctx context.Context) error { return run(ctx, getenv) },
		Env:           envconfig.Names(loadConfig),
		HealthDefault: defaultHTTPAddr,
		Traced:        true,
		Commands: []cli.Command{
			{
				Name: "keys", Args: "create|list|revoke ...", Summary: "manage API keys in DATABASE_URL (producer keys --help)",
				Run: func(ctx context.Context, args []string, stdout, stderr io.Writer) int {
					return runKeys(ctx, args, getenv, stdout, stderr)
				},
			},
			{
				Name: "migrate", Args: "up|status", Summary: "apply or list the database migrations in DATABASE_URL (producer migrate --help)",
				Run: func(ctx context.Context, args []string, stdout, stderr io.Writer) int {
					return runMigrate(ctx, args, getenv, stdout, stderr)
				},
			},
		},
	}
}
