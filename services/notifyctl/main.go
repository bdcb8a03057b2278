// Command notifyctl is the operator's command line for notify: publish, register and
// check devices, see what happened to a notification, replay failures and manage API keys.
//
// Exit codes (also in every command's help): 0 success, 1 failure, 2 usage error,
// 3 not found, 4 API key refused.
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
