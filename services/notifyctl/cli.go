package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// Exit codes scripts can rely on (also in the usage text).
const (
	exitOK       = 0
	exitFailure  = 1
	exitUsage    = 2
	exitNotFound = 3
	exitAuth     = 4
)

const usage = `notifyctl talks to notify's gRPC API.

Usage: notifyctl [global flags] <command> [flags] [arguments]

Commands:
  publish                        publish a notification (smoke tests)
  get ID                         a notification, its counts and per-token outcomes
  list                           notifications, newest first
      --status S                   pending, retrying, delivered, failed or expired
      --type T                     notification type
      --since W, --until W         W: a duration ago (90m, 1h, 7d) or an RFC 3339 time
      --limit N                    at most N (default 50; 0: all)
  dead list                      dead letters, newest first
      --reason R, --since W, --until W, --limit N
      --replayed | --unreplayed    only replayed / not yet replayed ones
  replay ID…                     send failed notifications again (undelivered, active tokens only)
  replay --dead                  … those with dead letters matching --reason R --since W --until W
                                   (not yet replayed ones unless --include-replayed)
      --dry-run                    change nothing; show what would happen
      --force                      replay pending/retrying ones too (may send twice)
      --batch N                    notifications per call (default 100); progress on stderr
  keys create NAME --role R      create an API key (R: publisher or admin); prints only the
                                   secret on stdout, once: notify keeps only its hash
  keys list [--all]              API keys (--all: revoked ones too)
  keys revoke NAME               revoke an API key (other replicas refuse it within their
                                   key cache TTL, API_KEY_CACHE_TTL, 15s by default)
  devices register               register a device's FCM token
      --user U --device D --token T [--platform android|ios|web]
  devices check --user U --device D
                                 ask whether a device is registered

Global flags (or environment):
  --addr ADDR        producer address (NOTIFY_ADDR, default 127.0.0.1:50051)
  --api-key KEY      API key sent as a bearer token (NOTIFY_API_KEY); publish and devices
                     need a publisher or admin key, everything else an admin key
  --timeout D        per-call timeout (default 30s)
  --json             print JSON (protobuf JSON of the responses) instead of tables

Exit codes:
  0  success (replay: every id was replayed or skipped for a reason shown in its result)
  1  failure: the server or the connection said no, or something went wrong
  2  usage error
  3  not found (get, keys revoke; replay: at least one id does not exist)
  4  not allowed: the API key is missing, unknown or revoked, or its role is not enough

The first admin key is made on a machine that can reach the database:
  producer keys create NAME --role admin      (DATABASE_URL; prints the secret)
`

// cli is one invocation's settings and outputs.
type cli struct {
	addr, apiKey string
	timeout      time.Duration
	json         bool
	out, errOut  io.Writer
	conn         *grpc.ClientConn
}

// usageError marks a mistake in the command line (exit code 2).
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

// notFoundError is a not-found answer the command worked out itself (exit code 3), e.g.
// a replay in which an id does not exist; its message is printed as is.
type notFoundError struct{ msg string }

func (e notFoundError) Error() string { return e.msg }

func run(ctx context.Context, args []string, getenv func(string) string, out, errOut io.Writer) int {
	c := &cli{out: out, errOut: errOut}
	fs := flag.NewFlagSet("notifyctl", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&c.addr, "addr", cmp.Or(getenv("NOTIFY_ADDR"), "127.0.0.1:50051"), "")
	fs.StringVar(&c.apiKey, "api-key", getenv("NOTIFY_API_KEY"), "")
	fs.DurationVar(&c.timeout, "timeout", 30*time.Second, "")
	fs.BoolVar(&c.json, "json", false, "")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(out, usage)
			return exitOK
		}
		fmt.Fprintf(errOut, "notifyctl: %v\n\n%s", err, usage)
		return exitUsage
	}
	rest := fs.Args()
	if len(rest) == 0 {
		fmt.Fprint(errOut, usage)
		return exitUsage
	}
	err := c.dispatch(ctx, rest)
	if c.conn != nil {
		c.conn.Close()
	}
	return c.exitCode(err)
}

func (c *cli) dispatch(ctx context.Context, args []string) error {
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "publish":
		return c.publish(ctx, rest)
	case "get":
		return c.get(ctx, rest)
	case "list":
		return c.list(ctx, rest)
	case "dead":
		if len(rest) == 0 || rest[0] != "list" {
			return usagef("dead needs a subcommand: list")
		}
		return c.deadList(ctx, rest[1:])
	case "replay":
		return c.replay(ctx, rest)
	case "keys":
		if len(rest) == 0 {
			return usagef("keys needs a subcommand: create, list or revoke")
		}
		switch rest[0] {
		case "create":
			return c.keysCreate(ctx, rest[1:])
		case "list":
			return c.keysList(ctx, rest[1:])
		case "revoke":
			return c.keysRevoke(ctx, rest[1:])
		}
		return usagef("unknown keys subcommand %q (want create, list or revoke)", rest[0])
	case "devices":
		if len(rest) == 0 {
			return usagef("devices needs a subcommand: register or check")
		}
		switch rest[0] {
		case "register":
			return c.devicesRegister(ctx, rest[1:])
		case "check":
			return c.devicesCheck(ctx, rest[1:])
		}
		return usagef("unknown devices subcommand %q (want register or check)", rest[0])
	case "help":
		fmt.Fprint(c.out, usage)
		return nil
	}
	return usagef("unknown command %q", cmd)
}

func (c *cli) exitCode(err error) int {
	if err == nil {
		return exitOK
	}
	var ue usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(c.errOut, "notifyctl: %s\nRun 'notifyctl help' for usage.\n", ue.msg)
		return exitUsage
	}
	var nf notFoundError
	if errors.As(err, &nf) {
		fmt.Fprintf(c.errOut, "notifyctl: %s\n", nf.msg)
		return exitNotFound
	}
	st, ok := status.FromError(err)
	if !ok {
		fmt.Fprintf(c.errOut, "notifyctl: %v\n", err)
		return exitFailure
	}
	fmt.Fprintf(c.errOut, "notifyctl: %s: %s\n", st.Code(), st.Message())
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				fmt.Fprintf(c.errOut, "  %s: %s\n", v.GetField(), v.GetDescription())
			}
		}
	}
	switch st.Code() {
	case codes.NotFound:
		return exitNotFound
	case codes.Unauthenticated, codes.PermissionDenied:
		if c.apiKey == "" {
			fmt.Fprintln(c.errOut, "  (no API key given: use --api-key or NOTIFY_API_KEY)")
		}
		return exitAuth
	}
	return exitFailure
}

// client connects lazily, so usage errors never need a server.
func (c *cli) client() (*grpc.ClientConn, error) {
	if c.conn != nil {
		return c.conn, nil
	}
	conn, err := grpc.NewClient(c.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", c.addr, err)
	}
	c.conn = conn
	return conn, nil
}

// callCtx is the context of one RPC: the timeout and the API key.
func (c *cli) callCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	if c.apiKey != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+c.apiKey)
	}
	return ctx, cancel
}

// printJSON writes a response as indented protobuf JSON.
func (c *cli) printJSON(m proto.Message) error {
	b, err := protojson.MarshalOptions{Multiline: true, Indent: "  ", EmitUnpopulated: false}.Marshal(m)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(c.out, string(b))
	return err
}

// stringList is a repeatable flag.
type stringList []string

func (s *stringList) String() string { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error {
	*s = append(*s, v)
	return nil
}

// parseFlags parses a subcommand's flags, turning problems into usage errors. Flags may
// come before, between or after the positional arguments ("replay ID --dry-run"), which
// fs.Args() returns in order.
func parseFlags(fs *flag.FlagSet, args []string) error {
	fs.SetOutput(io.Discard)
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return usagef("%s: %v", fs.Name(), err)
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	// Parse once more with only the positional arguments after "--", so fs.Args() is them.
	return fs.Parse(append([]string{"--"}, pos...))
}
