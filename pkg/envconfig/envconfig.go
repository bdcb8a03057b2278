// Package envconfig reads a service's configuration from environment variables: every
// service's config.go uses it, so every service reports bad settings the same way.
//
// A Reader collects problems instead of stopping at the first: Err reports all of them at
// once, one line each, each starting with the variable's name. An empty variable is the same
// as an unset one and takes the default. Secrets (and URLs that carry credentials) are read
// with Secret, which also accepts NAME_FILE, the path of a file holding the value (as
// Kubernetes and Docker mount secrets); error messages never quote a secret's value.
package envconfig

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"notify/pkg/logging"
)

// The defaults of the shared connection settings: the local PostgreSQL and RabbitMQ that
// `make run` and `make test` start.
const (
	DefaultDatabaseURL = "postgres://notify:notify@127.0.0.1:5432/notify?sslmode=disable"
	DefaultAMQPURL     = "amqp://guest:guest@127.0.0.1:5672/"
)

// Names returns the variables load reads, in the order it first reads them: the list a
// binary's --help shows. load runs with every variable unset.
func Names[C any](load func(getenv func(string) string) (C, error)) []string {
	var names []string
	seen := map[string]bool{}
	_, _ = load(func(name string) string {
		if !seen[name] {
			seen[name] = true
			names = append(names, name)
		}
		return ""
	})
	return names
}

// Reader reads variables through getenv and collects every problem it finds, and every
// setting's effective value for the service's start log (Settings).
type Reader struct {
	getenv   func(string) string
	errs     []error
	refused  map[string]bool // the variables errs names
	settings []slog.Attr
}

// Settings returns every variable read so far with its effective value (the default when
// unset), in the order first read, as a log group: the line each service logs at start.
// Secrets never appear: a secret shows as "[redacted]" (and its NAME_FILE as the path), a
// database or broker URL with its password masked, an HTTP URL as its scheme and host.
func (r *Reader) Settings() slog.Value { return slog.GroupValue(r.settings...) }

// record sets name's value in Settings.
func (r *Reader) record(name string, v slog.Value) {
	for i, a := range r.settings {
		if a.Key == name {
			r.settings[i].Value = v
			return
		}
	}
	r.settings = append(r.settings, slog.Attr{Key: name, Value: v})
}

// redacted is how Settings shows a secret: whether it is set, never what it is.
func redacted(v string) slog.Value {
	if v == "" {
		return slog.StringValue("")
	}
	return slog.StringValue("[redacted]")
}

// New returns a Reader that reads through getenv (os.Getenv in main, a map in tests).
func New(getenv func(string) string) *Reader { return &Reader{getenv: getenv} }

// Refused says whether a problem with one of the variables names has been recorded.
func (r *Reader) Refused(names ...string) bool {
	for _, name := range names {
		if r.refused[name] {
			return true
		}
	}
	return false
}

// Err joins every problem found so far, or is nil.
func (r *Reader) Err() error { return errors.Join(r.errs...) }

// Errorf records a problem with variable name (for checks that involve several variables
// or rules of the service's own). The message should not quote a secret.
func (r *Reader) Errorf(name, format string, args ...any) {
	r.refuse(name, fmt.Errorf("%s: %s", name, fmt.Sprintf(format, args...)))
}

// Check records err, if not nil, as a problem with variable name.
func (r *Reader) Check(name string, err error) {
	if err != nil {
		r.refuse(name, fmt.Errorf("%s: %w", name, err))
	}
}

func (r *Reader) refuse(name string, err error) {
	if r.refused == nil {
		r.refused = map[string]bool{}
	}
	r.refused[name] = true
	r.errs = append(r.errs, err)
}

// String returns the variable, or def when it is unset or empty.
func (r *Reader) String(name, def string) string {
	v := r.getenv(name)
	if v == "" {
		v = def
	}
	r.record(name, slog.StringValue(v))
	return v
}

// Secret returns the variable, or the contents of the file NAME_FILE names (one trailing
// newline removed), or def when neither is set. Setting both is a problem, and so is a
// file that cannot be read or is empty; the problem names the variable and the path, never
// the contents.
func (r *Reader) Secret(name, def string) string {
	fileVar := name + "_FILE"
	v, path := r.getenv(name), r.getenv(fileVar)
	if path != "" {
		r.record(fileVar, slog.StringValue(path))
	}
	s := r.secret(name, fileVar, v, path, def)
	r.record(name, redacted(s))
	return s
}

func (r *Reader) secret(name, fileVar, v, path, def string) string {
	switch {
	case v != "" && path != "":
		r.Errorf(name, "set either %s or %s, not both", name, fileVar)
		return ""
	case v != "":
		return v
	case path == "":
		return def
	}
	b, err := os.ReadFile(path)
	if err != nil {
		// *fs.PathError names the path and the cause, nothing of the contents.
		r.Check(fileVar, err)
		return ""
	}
	s := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
	if s == "" {
		r.Errorf(fileVar, "%s is empty", path)
	}
	return s
}

// Int returns the variable as an integer in lo..hi, or def when it is unset.
func (r *Reader) Int(name string, def, lo, hi int) int {
	v := r.getenv(name)
	if v == "" {
		r.record(name, slog.IntValue(def))
		return def
	}
	n, err := strconv.Atoi(v)
	r.record(name, slog.IntValue(n))
	switch {
	case err != nil:
		r.Errorf(name, "%q is not an integer", v)
	case n < lo || n > hi:
		r.Errorf(name, "%d is outside %d..%d", n, lo, hi)
	}
	return n
}

// Duration returns the variable as a duration of at least min, or def when it is unset.
// It takes Go durations ("90s", "1h30m") and whole days ("270d").
func (r *Reader) Duration(name string, def, min time.Duration) time.Duration {
	return r.DurationBetween(name, def, min, 0)
}

// DurationBetween is Duration with an upper bound too; max 0 means none.
func (r *Reader) DurationBetween(name string, def, min, max time.Duration) time.Duration {
	v := r.getenv(name)
	if v == "" {
		r.record(name, slog.DurationValue(def))
		return def
	}
	d, err := ParseDuration(v)
	r.record(name, slog.DurationValue(d))
	switch {
	case err != nil:
		r.Check(name, err)
	case d < min:
		r.Errorf(name, "%s is below the minimum %s", v, min)
	case max > 0 && d > max:
		r.Errorf(name, "%s is above the maximum %s", v, max)
	}
	return d
}

// ParseDuration is time.ParseDuration that also takes whole days ("270d"), the natural unit
// of settings such as token staleness and retention.
func ParseDuration(s string) (time.Duration, error) {
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(days)
		if err != nil || n < 0 || n > 100*365 {
			return 0, fmt.Errorf("invalid duration %q (want e.g. 90s, 1h30m or 270d)", s)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("invalid duration %q (want e.g. 90s, 1h30m or 270d)", s)
	}
	return d, nil
}

// Addr returns the variable as a listen or dial address host:port (the host may be
// empty), or def when it is unset.
func (r *Reader) Addr(name, def string) string {
	v := r.String(name, def)
	_, port, err := net.SplitHostPort(v)
	if err != nil {
		r.Errorf(name, "%q is not host:port", v)
		return v
	}
	// Checked here so that the error names the variable, not a listener failing later.
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		r.Errorf(name, "%q: the port must be a number from 0 to 65535", v)
	}
	return v
}

// DefaultGOGC is the garbage collector's target a service runs with when GOGC is unset: a
// collection once the heap has grown by three times what the last one left alive, where
// the Go runtime's own default (100) collects once it has grown by that much. notify's services allocate
// much per message and keep little (the producer ~28 KB per Publish, the sender ~22 KB per
// notification, against live heaps of a few MB), so the collector ran often: 8–13% of their
// CPU. make bench -phases sustain,fanout, binaries without and with this default
// alternated three times: producer 0.306, 0.327, 0.295 → 0.259, 0.320, 0.275 CPU ms per
// notification, sender 0.235, 0.262, 0.230 → 0.197, 0.236, 0.207; peak RSS under that load
// producer ~100 → ~160 MB, sender ~67 → ~95 MB; at rest unchanged. A
// GOMEMLIMIT (the Kubernetes manifests set one below each memory limit) still bounds the
// heap: near it the runtime collects as often as it must.
const DefaultGOGC = 300

// GCPercent returns the garbage collector's target to set at start: DefaultGOGC when GOGC
// is unset, 0 when GOGC is set (the Go runtime has read it: it is left alone). GOGC must be
// what the runtime understands, a percentage or off; the runtime ignores anything else.
func (r *Reader) GCPercent() int {
	v := r.getenv("GOGC")
	if v == "" {
		r.record("GOGC", slog.IntValue(DefaultGOGC))
		return DefaultGOGC
	}
	if n, err := strconv.Atoi(v); v != "off" && (err != nil || n < 0) {
		r.Errorf("GOGC", "want a percentage (e.g. %d) or off, got %q", DefaultGOGC, v)
		return 0
	}
	r.record("GOGC", slog.StringValue(v))
	return 0
}

// LogLevel returns LOG_LEVEL: debug, info (the default), warn or error.
func (r *Reader) LogLevel() slog.Level {
	l, err := logging.ParseLevel(r.getenv("LOG_LEVEL"))
	r.Check("LOG_LEVEL", err)
	r.record("LOG_LEVEL", slog.StringValue(l.String()))
	return l
}

// DatabaseURL returns DATABASE_URL (or the file DATABASE_URL_FILE names), by default the
// local development database. A URL must be postgres:// or postgresql:// with a host; a
// keyword/value string ("host=… dbname=…") is left to the driver, and not shown in the
// settings. Services read it through schema.DatabaseURL, which also parses it as the pool
// will (this package does not depend on the driver, which the emulator does not link).
func (r *Reader) DatabaseURL() string {
	v := r.Secret("DATABASE_URL", DefaultDatabaseURL)
	if v != "" && strings.Contains(v, "://") {
		if r.checkURL("DATABASE_URL", v, "postgres", "postgresql") {
			r.record("DATABASE_URL", maskPassword(v))
		}
	}
	return v
}

// AMQPURL returns AMQP_URL (or the file AMQP_URL_FILE names), by default the local
// development broker. It must be an amqp:// or amqps:// URL with a host.
func (r *Reader) AMQPURL() string {
	v := r.Secret("AMQP_URL", DefaultAMQPURL)
	if v != "" && r.checkURL("AMQP_URL", v, "amqp", "amqps") {
		r.record("AMQP_URL", maskPassword(v))
	}
	return v
}

// HTTPURL returns the variable (or NAME_FILE's contents: such URLs often carry a secret,
// as a Slack webhook does) as an http:// or https:// URL with a host, or def when unset.
func (r *Reader) HTTPURL(name, def string) string {
	v := r.Secret(name, def)
	if v != "" && r.checkURL(name, v, "http", "https") {
		// The path or query of such a URL may be the secret (a Slack webhook's is).
		u, _ := url.Parse(v)
		r.record(name, slog.StringValue(u.Scheme+"://"+u.Host+"/[redacted]"))
	}
	return v
}

// maskPassword is v (a valid URL) with the password of its user info masked.
func maskPassword(v string) slog.Value {
	u, _ := url.Parse(v)
	return slog.StringValue(u.Redacted())
}

// checkURL records a problem when v is not a URL with one of schemes and a host, and
// reports whether it is. The messages never quote v: its user info, path or query may be a
// secret, and url.Parse's own error quotes the whole value.
func (r *Reader) checkURL(name, v string, schemes ...string) bool {
	u, err := url.Parse(v)
	if err != nil {
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err
		}
		// Errors such as "invalid port" quote a fragment of the value; name the kind only.
		r.Errorf(name, "not a valid URL (%s)", urlProblem(err))
		return false
	}
	for _, s := range schemes {
		if u.Scheme == s {
			if u.Host == "" {
				r.Errorf(name, "the URL has no host")
				return false
			}
			return true
		}
	}
	r.Errorf(name, "want a URL starting with %s://", strings.Join(schemes, ":// or "))
	return false
}

// urlProblem describes a url.Parse error without the part of the value it quotes.
func urlProblem(err error) string {
	msg := err.Error()
	if i := strings.IndexAny(msg, "\"'"); i > 0 {
		msg = strings.TrimSpace(msg[:i])
	}
	return msg
}
