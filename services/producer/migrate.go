package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"notify/pkg/cli"
	"notify/pkg/logging"
	"notify/pkg/schema"
)

const migrateUsage = `producer migrate applies or lists the database migrations in DATABASE_URL.

The producer also migrates at start unless MIGRATE_ON_START=false; a deployment that sets it
runs "producer migrate up" once per release instead (a Kubernetes Job), before rolling the
services, which wait for the schema. Migrations only go forward; replicas and Jobs that
migrate at once take turns on an advisory lock.

Usage:
  producer migrate up        apply every pending migration
  producer migrate status    list applied and pending migrations

Exit codes: 0 ok (status: up to date), 1 failure, 2 usage error,
3 (status) migrations pending, 4 the database is newer than this binary.
`

// runMigrate runs `producer migrate …` and returns the exit code.
func runMigrate(ctx context.Context, args []string, getenv func(string) string, out, errOut io.Writer) int {
	if len(args) == 1 && args[0] == "help" {
		fmt.Fprint(out, migrateUsage)
		return 0
	}
	// `migrate up --help` is help too; any other flag, or a word after the subcommand, is a
	// usage error that names it.
	fs := flag.NewFlagSet("producer migrate", flag.ContinueOnError)
	err := cli.ParseFlags(fs, args)
	if len(args) > 0 && err == nil && fs.NArg() > 0 && fs.Arg(0) == args[0] {
		err = cli.ParseFlags(fs, args[1:])
	}
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(out, migrateUsage)
		return 0
	}
	var msg string
	switch {
	case err != nil:
		msg = err.Error()
	case len(args) == 0:
		msg = "give one subcommand: up or status"
	case args[0] != "up" && args[0] != "status":
		msg = fmt.Sprintf("unknown subcommand %q", args[0])
	case fs.NArg() > 0:
		msg = fmt.Sprintf("%s takes no arguments, got %q", args[0], fs.Arg(0))
	}
	if msg != "" {
		fmt.Fprintf(errOut, "producer migrate: %s\n\n%s", msg, migrateUsage)
		return 2
	}
	st, err := migrateCommand(ctx, args[0], getenv, out, errOut)
	var newer *schema.NewerError
	switch {
	case errors.As(err, &newer):
		fmt.Fprintf(errOut, "producer migrate: %v\n", err)
		return 4
	case err != nil:
		fmt.Fprintf(errOut, "producer migrate: %v\n", err)
		return 1
	case len(st.Pending) > 0:
		return 3
	}
	return 0
}

func migrateCommand(ctx context.Context, cmd string, getenv func(string) string, out, errOut io.Writer) (schema.Status, error) {
	cfg, err := loadConfig(getenv)
	if err != nil {
		return schema.Status{}, fmt.Errorf("config: %w", err)
	}
	pool, err := pgxpool.New(ctx, cfg.DatabaseURL)
	if err != nil {
		return schema.Status{}, fmt.Errorf("DATABASE_URL: %w", err)
	}
	defer pool.Close()
	// The services' JSON logger: this is the Kubernetes migration Job's command, whose log
	// lines are collected as the services' are.
	log := logging.New(errOut, "producer", cfg.LogLevel)
	if err := waitForDatabase(ctx, pool, log, time.Minute); err != nil {
		return schema.Status{}, err
	}
	if cmd == "up" {
		// No deadline: building an index concurrently on a large table takes as long as it
		// takes; SIGTERM (ctx) is the way to stop it, and the next run finishes the job.
		n, err := schema.Migrate(ctx, pool, log)
		if err != nil {
			return schema.Status{}, err
		}
		fmt.Fprintf(errOut, "database at version %s (%d migrations applied now)\n", schema.Latest(), n)
		return schema.Status{}, nil
	}

	statusCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	st, err := schema.ReadStatus(statusCtx, pool)
	if err != nil {
		return schema.Status{}, err
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VERSION\tSTATE\tAPPLIED AT")
	type row struct{ version, state, at string }
	var rows []row
	for _, a := range st.Applied {
		state := "applied"
		if a.Version > st.Latest {
			state = "applied, newer than this binary"
		}
		rows = append(rows, row{a.Version, state, a.AppliedAt.UTC().Format(time.RFC3339)})
	}
	for _, m := range st.Pending {
		rows = append(rows, row{m.Version, "pending", "-"})
	}
	slices.SortFunc(rows, func(a, b row) int { return strings.Compare(a.version, b.version) })
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", r.version, r.state, r.at)
	}
	if err := tw.Flush(); err != nil {
		return st, err
	}
	if err := st.Err(); err != nil {
		var newer *schema.NewerError
		if errors.As(err, &newer) {
			return st, err
		}
		fmt.Fprintf(errOut, "%d pending: database at %s, this binary knows %s\n", len(st.Pending), cmp.Or(st.Current(), "(none)"), st.Latest)
		return st, nil
	}
	fmt.Fprintf(errOut, "up to date: database at %s\n", st.Current())
	return st, nil
}
