// Package logging builds the JSON slog logger every notify service writes to stderr.
//
// Every line is one JSON object with "time", "level", "msg" and "service"; durations are
// numbers of seconds (a float), whatever the attribute, so that log queries compare them
// without parsing Go's "1m30s" or slog's default nanoseconds.
package logging

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"

	"notify/pkg/buildinfo"
)

// ParseLevel reads a LOG_LEVEL value: debug, info, warn or error (any case); empty is info.
func ParseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if s == "" {
		return slog.LevelInfo, nil
	}
	if err := l.UnmarshalText([]byte(strings.ToUpper(s))); err != nil {
		return 0, fmt.Errorf("want debug, info, warn or error, got %q", s)
	}
	return l, nil
}

// New returns a JSON logger at level that names its service in every record.
func New(w io.Writer, service string, level slog.Level) *slog.Logger {
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level, ReplaceAttr: seconds})).With("service", service)
}

// seconds writes every time.Duration attribute as a number of seconds.
func seconds(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		return slog.Float64(a.Key, a.Value.Duration().Seconds())
	}
	return a
}

// Starting logs the line every service writes first: the build it runs (version, commit, Go
// version) and its settings (envconfig.Reader.Settings: every variable's effective value,
// secrets redacted).
func Starting(log *slog.Logger, settings slog.Value) {
	b := buildinfo.Read()
	log.Info("starting", "version", b.Version, "commit", b.Commit, "go_version", b.GoVersion, "settings", settings)
}

// Stopping logs "stopping" as soon as ctx ends (SIGTERM or Ctrl-C: the service stops taking
// work and lets what is in flight finish within drain, its SHUTDOWN_TIMEOUT), so that an
// operator reading a pod's log sees why it went quiet. Call the function it returns when the
// service has stopped: it logs "stopped" with how long stopping took, or nothing when ctx
// never ended (a start-up failure, which the caller reports as an error).
func Stopping(ctx context.Context, log *slog.Logger, drain time.Duration) (stopped func()) {
	var (
		mu    sync.Mutex
		since time.Time
	)
	cancel := context.AfterFunc(ctx, func() {
		mu.Lock()
		since = time.Now()
		mu.Unlock()
		log.Info("stopping", "reason", context.Cause(ctx).Error(), "drain", drain)
	})
	return func() {
		if cancel() { // ctx has not ended: nothing was said, nothing to add
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if !since.IsZero() {
			log.Info("stopped", "took", time.Since(since))
		}
	}
}
