// Package logging builds the JSON slog logger every notify service writes to stderr.
//
// Every line is one JSON object with "time", "level", "msg" and "service"; durations are
// numbers of seconds (a float), whatever the attribute, so that log queries compare them
// without parsing Go's "1m30s" or slog's default nanoseconds.
package logging

import (
	"fmt"
	"io"
	"log/slog"
	"strings"

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
