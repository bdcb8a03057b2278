// Command bench measures notify end to end on one machine, in one invocation: the raw
// broker and raw FCM-edge rates as baselines, Publish throughput and latency, a broadcast
// fan-out, Publish → FCM latency at a fixed rate, and each service's memory and CPU.
//
// It starts its own copy of every service (from -bin) on free ports, with its own database
// and its own RabbitMQ topology, and removes both at the end; the default notify database
// and topology are never touched. RabbitMQ and PostgreSQL must be running (`make bench`
// runs scripts/devenv.sh first). Results go to stdout as a table and to a JSON file under
// -out; progress goes to stderr. The exit status is 1 when anything was lost, failed or
// crashed, or the bench itself could not run.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}
