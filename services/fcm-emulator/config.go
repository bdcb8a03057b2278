package main

import (
	"log/slog"
	"strconv"
	"strings"
	"time"

	"notify/pkg/envconfig"
)

// defaultHTTPAddr is where the service serves /readyz (and /metrics) when FCM_EMULATOR_ADDR is not set.
const defaultHTTPAddr = "127.0.0.1:9099"

// config is everything the emulator reads from the environment.
type config struct {
	// Settings is every variable's effective value, secrets redacted: the start log.
	Settings slog.Value

	Addr                  string         // FCM_EMULATOR_ADDR
	LogLevel              slog.Level     // LOG_LEVEL
	QuotaPerMinute        int            // FCM_EMULATOR_QUOTA_PER_MINUTE, per project, 0 = unlimited
	ProjectQuotas         map[string]int // FCM_EMULATOR_PROJECT_QUOTAS, "project=N,…"
	Latency               time.Duration  // FCM_EMULATOR_LATENCY
	RetryAfter            time.Duration  // FCM_EMULATOR_RETRY_AFTER
	UnavailableRetryAfter time.Duration  // FCM_EMULATOR_UNAVAILABLE_RETRY_AFTER, 0 = no header
}

// loadConfig reads the configuration through getenv, reporting every problem at once.
func loadConfig(getenv func(string) string) (config, error) {
	e := envconfig.New(getenv)
	c := config{
		Addr:                  e.Addr("FCM_EMULATOR_ADDR", defaultHTTPAddr),
		LogLevel:              e.LogLevel(),
		QuotaPerMinute:        e.Int("FCM_EMULATOR_QUOTA_PER_MINUTE", 0, 0, 1_000_000_000),
		ProjectQuotas:         projectQuotas(e, "FCM_EMULATOR_PROJECT_QUOTAS"),
		Latency:               e.Duration("FCM_EMULATOR_LATENCY", 0, 0),
		RetryAfter:            e.Duration("FCM_EMULATOR_RETRY_AFTER", 30*time.Second, time.Second),
		UnavailableRetryAfter: e.Duration("FCM_EMULATOR_UNAVAILABLE_RETRY_AFTER", 0, 0),
	}
	c.Settings = e.Settings()
	return c, e.Err()
}

// projectQuotas reads a list "project=N,project=N" of per-project quotas (nil when unset).
func projectQuotas(e *envconfig.Reader, name string) map[string]int {
	v := strings.TrimSpace(e.String(name, ""))
	if v == "" {
		return nil
	}
	out := make(map[string]int)
	for item := range strings.SplitSeq(v, ",") {
		project, n, ok := strings.Cut(strings.TrimSpace(item), "=")
		q, err := strconv.Atoi(strings.TrimSpace(n))
		project = strings.TrimSpace(project)
		switch {
		case !ok || project == "":
			e.Errorf(name, "%q: want project=quota_per_minute", item)
		case err != nil || q < 0:
			e.Errorf(name, "%q: the quota must be a whole number >= 0", item)
		case isDup(out, project):
			e.Errorf(name, "%q: project listed twice", project)
		default:
			out[project] = q
		}
	}
	return out
}

func isDup(m map[string]int, k string) bool {
	_, ok := m[k]
	return ok
}
