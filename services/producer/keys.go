package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"notify/pkg/cli"
	"notify/pkg/logging"
	"notify/pkg/schema"
	"notify/services/producer/internal/apikey"
)

const keysUsage = `producer keys manages API keys directly in the database (DATABASE_URL).

It is the bootstrap path: the first admin key cannot be made over the API, which needs an
admin key. Whoever can reach the database can do anything notify can, so this grants no
more than they already have. Once an admin key exists, prefer notifyctl keys.

Usage:
  producer keys create NAME --role admin|publisher [--apps a,b] [--allow-ignore-preferences]
                                                     prints the secret (only) on stdout;
                                                     --apps limits a publisher key to those apps;
                                                     --allow-ignore-preferences lets a publisher
                                                     key publish with ignore_preferences
  producer keys list [--all]                         --all: revoked keys too
  producer keys revoke NAME

Exit codes: 0 ok, 1 failure, 2 usage error, 3 no such key (revoke).
`

// runKeys runs `producer keys …` and returns the exit code.
func runKeys(ctx context.Context, args []string, getenv func(string) string, out, errOut io.Writer) int {
	if len(args) == 1 && args[0] == "help" {
		fmt.Fprint(out, keysUsage)
		return 0
	}
	err := keysCommand(ctx, args, getenv, out, errOut)
	var ue keysUsageError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp): // `keys create --help` and the like
		fmt.Fprint(out, keysUsage)
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(errOut, "producer keys: %s\n\n%s", ue.msg, keysUsage)
		return 2
	case errors.Is(err, errNoSuchKey):
		fmt.Fprintf(errOut, "producer keys: %v\n", err)
		return 3
	}
	fmt.Fprintf(errOut, "producer keys: %v\n", err)
	return 1
}

type keysUsageError struct{ msg string }

func (e keysUsageError) Error() string { return e.msg }

var errNoSuchKey = errors.New("no active key with that name")

func keysCommand(ctx context.Context, args []string, getenv func(string) string, out, errOut io.Writer) error {
	// Flags may come anywhere, before the subcommand too (`keys -help`).
	fs := flag.NewFlagSet("producer keys", flag.ContinueOnError)
	role := fs.String("role", "", "")
	all := fs.Bool("all", false, "")
	appList := fs.String("apps", "", "")
	ignorePrefs := fs.Bool("allow-ignore-preferences", false, "")
	pos, err := parseInterleaved(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		return err
	}
	if err != nil {
		return keysUsageError{err.Error()}
	}
	if len(pos) == 0 {
		return keysUsageError{"give a subcommand: create, list or revoke"}
	}
	sub, pos := pos[0], pos[1:]
	switch {
	case sub == "create" && (len(pos) != 1 || *role == ""):
		return keysUsageError{"create needs a NAME and --role admin|publisher"}
	case sub == "revoke" && len(pos) != 1:
		return keysUsageError{"revoke needs a NAME"}
	case sub == "list" && len(pos) != 0:
		return keysUsageError{"list takes no arguments"}
	case sub != "create" && sub != "revoke" && sub != "list":
		return keysUsageError{fmt.Sprintf("unknown subcommand %q", sub)}
	}
	var r apikey.Role
	var apps []string
	if sub == "create" {
		if r, err = apikey.ParseRole(*role); err != nil {
			return keysUsageError{err.Error()}
		}
		if err := apikey.CheckName(pos[0]); err != nil {
			return keysUsageError{err.Error()}
		}
		if *ignorePrefs && r == apikey.RoleAdmin {
			return keysUsageError{"--allow-ignore-preferences is for publisher keys; an admin key always may"}
		}
		if *appList != "" {
			if r == apikey.RoleAdmin {
				return keysUsageError{"--apps limits publisher keys; an admin key is never limited"}
			}
			for app := range strings.SplitSeq(*appList, ",") {
				if err := schema.CheckAppName(app); err != nil {
					return keysUsageError{"--apps: app name " + err.Error()}
				}
				if slices.Contains(apps, app) {
					return keysUsageError{fmt.Sprintf("--apps: %q given twice", app)}
				}
				apps = append(apps, app)
			}
		}
	}

	cfg, err := loadConfig(getenv)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	// As CreateAPIKey: only apps the producer knows (APPS).
	for _, app := range apps {
		if !slices.Contains(cfg.Apps, app) {
			return keysUsageError{fmt.Sprintf("--apps: unknown app %q; the apps are: %s (APPS)", app, strings.Join(cfg.Apps, ", "))}
		}
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	pool, err := pgxpool.New(ctx, cfg.DatabaseURL)
	if err != nil {
		return fmt.Errorf("DATABASE_URL: %w", err)
	}
	defer pool.Close()
	if err := pool.Ping(ctx); err != nil {
		return fmt.Errorf("DATABASE_URL: database not reachable: %w", err)
	}
	// The keys may be made before the producer ever ran against this database: it is
	// migrated first, as a producer would at start, unless MIGRATE_ON_START=false says that
	// migrations are left to `producer migrate up` (a Kubernetes Job, a staged upgrade):
	// a keys command must not apply them behind the operator's back.
	if cfg.MigrateOnStart {
		// The services' JSON logger, at warn at least: a line per applied migration would
		// bury what the command prints about the key.
		log := logging.New(errOut, "producer", max(cfg.LogLevel, slog.LevelWarn))
		if _, err := schema.Migrate(ctx, pool, log); err != nil {
			return fmt.Errorf("migrate database: %w", err)
		}
	} else if err := schema.Check(ctx, pool); err != nil {
		return fmt.Errorf("MIGRATE_ON_START=false: %w", err)
	}
	store := apikey.NewStore(pool)

	switch sub {
	case "create":
		k, secret, err := store.CreateWith(ctx, pos[0], r, apikey.Options{Apps: apps, MayIgnorePreferences: *ignorePrefs})
		if err != nil {
			return err
		}
		fmt.Fprintln(out, secret)
		cc := pool.Config().ConnConfig
		fmt.Fprintf(errOut, "created %s key %q in database %s on %s:%d; its secret (above) is shown only this once: notify stores only its SHA-256\n",
			k.Role, k.Name, cc.Database, cc.Host, cc.Port)
	case "revoke":
		revoked, err := store.Revoke(ctx, pos[0])
		if err != nil {
			return err
		}
		if !revoked {
			return fmt.Errorf("%q: %w", pos[0], errNoSuchKey)
		}
		fmt.Fprintf(errOut, "revoked key %q; replicas refuse it within API_KEY_CACHE_TTL\n", pos[0])
	case "list":
		keys, err := store.List(ctx, *all)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tROLE\tCREATED\tLAST USED\tREVOKED\tRATE\tBURST\tAPPS\tIGNORE PREFS")
		for _, k := range keys {
			apps := "all"
			if k.Apps != nil {
				apps = strings.Join(k.Apps, ",")
			}
			ignore := "no"
			if k.CanIgnorePreferences() {
				ignore = "yes"
			}
			// As notifyctl keys list shows them: the key's own limit, or its role's default.
			rate, burst := "default", "default"
			switch {
			case k.Limit.PerSecond == nil:
			case *k.Limit.PerSecond == 0:
				rate = "unlimited"
			default:
				rate = fmt.Sprintf("%d/s", *k.Limit.PerSecond)
			}
			if k.Limit.Burst != nil {
				burst = fmt.Sprint(*k.Limit.Burst)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", k.Name, k.Role, k.CreatedAt.UTC().Format(time.RFC3339),
				timeOrDash(k.LastUsedAt), timeOrDash(k.RevokedAt), rate, burst, apps, ignore)
		}
		return tw.Flush()
	}
	return nil
}

func timeOrDash(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

// parseInterleaved parses flags wherever they appear among the positional arguments
// ("create NAME --role admin" as well as "create --role admin NAME").
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := cli.ParseFlags(fs, args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}
