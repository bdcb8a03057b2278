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

// Exit codes scripts can rely on.
const (
	exitOK       = 0
	exitFailure  = 1
	exitUsage    = 2
	exitNotFound = 3
)

const usage = `notifyctl talks to notify's gRPC API.

Usage: notifyctl [global flags] <command> [flags]

Commands:
  publish            publish a notification (smoke tests)
  get ID             show a notification and its per-token outcomes
  devices register   register a device's FCM token
  devices check      ask whether a device is registered

Global flags (or environment):
  --addr ADDR        producer address (NOTIFY_ADDR, default 127.0.0.1:50051)
  --api-key KEY      API key sent as a bearer token (NOTIFY_API_KEY)
  --timeout D        per-call timeout (default 30s)
  --json             print JSON instead of tables

Exit codes: 0 ok, 1 failure, 2 usage error, 3 not found.
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
	if st.Code() == codes.NotFound {
		return exitNotFound
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

// parseFlags parses a subcommand's flags, turning problems into usage errors.
func parseFlags(fs *flag.FlagSet, args []string) error {
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		return usagef("%s: %v", fs.Name(), err)
	}
	return nil
}
