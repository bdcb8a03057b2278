// Command notifyctl is the operator's command line for notify: publish, register and
// check devices, and see what happened to a notification.
//
// Exit codes: 0 success, 1 failure (the server or the connection said no), 2 usage error,
// 3 not found.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
