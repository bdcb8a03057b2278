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
	// The time zone database, built in (~450 KB): --since/--until take a date as midnight in
	// TZ, and the image of `make images` has no /usr/share/zoneinfo, without which Go ignores
	// TZ and uses UTC.
	_ "time/tzdata"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
