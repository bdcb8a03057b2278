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
	var since time.Time
	said := make(chan struct{}) // closed once "stopping" is written
	cancel := context.AfterFunc(ctx, func() {
		defer close(said)
		since = time.Now()
		log.Info("stopping", "reason", context.Cause(ctx).Error(), "drain", drain)
	})
	return func() {
		if cancel() { // ctx has not ended: nothing was said, nothing to add
			return
		}
		// "stopping" is being written on the AfterFunc's goroutine, or was: "stopped" must
		// come after it (a service that stops at once got the two the wrong way round).
		<-said
		log.Info("stopped", "took", time.Since(since))
	}
}

// Repeat logs a failure that a loop meets again and again while something is down (a relay
// retrying every second during a database outage): the first failure at once, then at most
// one line per interval with how many failures it stands for, and one line when the loop
// succeeds again, instead of a line per attempt. Safe for concurrent use (several loops
// may share one).
type Repeat struct {
	log               *slog.Logger
	failed, recovered string
	interval          time.Duration
	now               func() time.Time
	mu                sync.Mutex
	began, said       time.Time // the current run of failures began, was last logged; zero: none
	unsaid, total     int       // failures since the last line, and in the whole run
}

// NewRepeat returns a Repeat that logs failed (a warning, with the error) and recovered.
func NewRepeat(log *slog.Logger, failed, recovered string, interval time.Duration) *Repeat {
	return &Repeat{log: log, failed: failed, recovered: recovered, interval: interval, now: time.Now}
}

// Fail records a failure and logs it when it begins a run or interval has passed since the
// last line: `repeats` is how many failures the line stands for, `for` how long they have
// lasted.
func (r *Repeat) Fail(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	r.unsaid++
	r.total++
	if r.began.IsZero() {
		r.began = now
	} else if now.Sub(r.said) < r.interval {
		return
	}
	r.log.Warn(r.failed, "err", err.Error(), "repeats", r.unsaid, "for", now.Sub(r.began))
	r.said, r.unsaid = now, 0
}

// OK ends a run of failures, if one was going on, with a line saying how long it lasted.
func (r *Repeat) OK() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.began.IsZero() {
		return
	}
	r.log.Info(r.recovered, "failures", r.total, "for", r.now().Sub(r.began))
	r.began, r.said, r.unsaid, r.total = time.Time{}, time.Time{}, 0, 0
}
