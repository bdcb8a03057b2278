// Command bench measures notify end to end on one machine, in one invocation: the raw
// broker and raw FCM-edge rates as baselines, Publish throughput and latency, a broadcast
// fan-out, Publish → FCM latency at a fixed rate, the rate the pipeline sustains for
// one-token notifications against an in-memory push server given the same load (this binary
// in a hidden mode, memserver.go), and each service's memory and CPU.
//
// It starts its own copy of every service (from -bin) on free ports, with its own database
// and its own RabbitMQ topology, and removes both at the end; the default notify database
// and topology are never touched. RabbitMQ and PostgreSQL must be running (`make bench`
// runs scripts/devenv.sh first). Results go to stdout as a table and to a JSON file under
// -out; progress goes to stderr. The exit status is 1 when anything was lost, failed or
// crashed, or the bench itself could not run; 2 for a wrong flag or argument; -h and --help
// print the usage and exit 0.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	if os.Getenv(memserverEnv) == "1" {
		// Started by the bench itself as its in-memory push server (memserver.go).
		err := memserverMain(ctx, os.Getenv, os.Stderr)
		stop()
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench (in-memory push server):", err)
			os.Exit(1)
		}
		return
	}
	code := mainCode(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// mainCode runs the bench and returns its exit code.
func mainCode(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	err := run(ctx, args, getenv, stdout, stderr)
	var usage usageError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &usage):
		fmt.Fprintln(stderr, "bench:", err)
		fmt.Fprintln(stderr, "Run 'bench -h' for usage.")
		return 2
	default:
		fmt.Fprintln(stderr, "bench:", err)
		return 1
	}
}

// usageError is a wrong flag or argument: exit code 2, as for every notify binary.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }
