package main

import (
	"cmp"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"notify/pkg/cli"
	"notify/pkg/delivery"
	"notify/pkg/envconfig"
	"notify/pkg/schema"
)

// Phases, in the order they run.
const (
	phaseBaselines = "baselines"
	phasePublish   = "publish"
	phaseBatch     = "batch"
	phaseFanout    = "fanout"
	phaseLatency   = "latency"
	phaseReference = "reference"
	phaseSustain   = "sustain"
	phasePaced     = "paced"
	phaseApps      = "apps"
)

// The latency phase runs before the fan-out: the broadcast then also reaches the latency
// phase's devices, and is planned with its notifications in the history.
// The reference (the in-memory push server) runs right before the sustain phase, so that the
// two are measured in the same minutes of the machine.
// The paced phases come last: they replace the sender and the retrier with paced ones, and
// their quota is held below the fan-out's unpaced speed.
var allPhases = []string{phaseBaselines, phasePublish, phaseBatch, phaseLatency, phaseReference, phaseSustain, phaseFanout, phasePaced, phaseApps}

// config is everything the bench reads from its flags and the environment.
type config struct {
	BinDir string // service binaries (make build)
	OutDir string // JSON results
	LogDir string // service logs of this run

	// DatabaseURL is the server to use; the bench creates its own database on it.
	DatabaseURL   string
	AMQPURL       string
	ManagementURL string

	Phases map[string]bool

	BaselineDuration time.Duration
	Warmup           time.Duration
	PublishClients   int
	PublishDuration  time.Duration
	DrainTimeout     time.Duration
	FanoutDevices    int
	// History is how many past notifications (two delivered tokens each) the database
	// holds before any phase: a production database's statistics, not an empty one's.
	History         int
	RegisterBatch   int
	RegisterClients int
	LatencyRate     int
	LatencyDuration time.Duration
	// BatchClients call PublishBatch (500 requests each) until BatchNotifications are sent.
	BatchClients       int
	BatchNotifications int
	// SustainNotifications one-token notifications are published as fast as Publish takes
	// them (PublishClients clients) and timed to their last outcome, by notify in the sustain
	// phase and by the in-memory push server in the reference phase.
	SustainNotifications int
	// PacedQuota is the default app's quota a minute in the paced phases (0: derived from
	// the raw FCM edge of the run); AppsDevices are the apps phase's devices of its first app.
	PacedQuota  int
	AppsDevices int
	// StatusEventsOff turns status events off in the bench database
	// (schema.StatusEventsSetting), as a deployment without subscribers may.
	StatusEventsOff bool

	// FCMConcurrency is the sender's FCM_MAX_CONCURRENT_SENDS as it will read it; the raw
	// FCM-edge baseline sends with the same number of multicasts in flight.
	FCMConcurrency int
	// ServiceEnv are the tuning variables set in the environment, which the services
	// inherit; they are recorded with the results so runs compare like with like.
	ServiceEnv map[string]string

	// Compare, when set, names two directories of service binaries whose runs of the
	// chosen phases alternate, Pairs of each (compare.go); RunArgs are the flags given that
	// each of those runs takes as they are.
	Compare [2]string
	Pairs   int
	RunArgs []string
}

// usage prints what bench -h shows: the flags and the environment it reads.
func usage(fs *flag.FlagSet, w io.Writer) {
	fmt.Fprint(w, `bench: measures notify end to end on this machine (make bench; README.md, section Performance)

Usage:
  bench [flags]

Flags:
`)
	fs.SetOutput(w)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
	fmt.Fprintf(w, `
Environment:
  DATABASE_URL              the PostgreSQL server the bench makes its own database on (default %s)
  AMQP_URL                  the RabbitMQ broker (default %s)
  RABBITMQ_MANAGEMENT_URL   its management API (default http://guest:guest@127.0.0.1:15672)
  the services' tuning variables, passed on to the services it starts and recorded with the
  results: every variable named or starting with
%s
`, envconfig.DefaultDatabaseURL, envconfig.DefaultAMQPURL, cli.Wrap(tuningPrefixes, 88, "    "))
}

// tuningPrefixes name the environment variables that change how the services perform.
var tuningPrefixes = []string{"SEND_", "RETRY_", "FCM_", "OUTBOX_", "PUBLISH_", "DEADLETTER_", "ALERT_", "LOG_LEVEL",
	"SHUTDOWN_TIMEOUT", "GOMAXPROCS", "GOGC", "GOMEMLIMIT"}

// loadConfig reads the flags and the environment; -h prints the usage to helpOut.
func loadConfig(args []string, getenv func(string) string, environ []string, helpOut io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	// cli.ParseFlags prints nothing: a parse error is reported once, by main; -h prints the usage below.
	fs.StringVar(&c.BinDir, "bin", "bin", "directory with the service binaries (built by make build)")
	fs.StringVar(&c.OutDir, "out", "bench-results", "directory for the JSON results")
	fs.StringVar(&c.LogDir, "logs", "", "directory for the service logs (default tmp/bench/<run>)")
	phases := fs.String("phases", strings.Join(allPhases, ","), "phases to run, comma-separated")
	fs.DurationVar(&c.BaselineDuration, "baseline-duration", 5*time.Second, "how long each baseline runs")
	fs.DurationVar(&c.Warmup, "warmup", time.Second, "Publish calls made before measuring starts")
	fs.IntVar(&c.PublishClients, "publish-clients", 32, "concurrent gRPC clients calling Publish")
	fs.DurationVar(&c.PublishDuration, "publish-duration", 10*time.Second, "how long Publish is measured")
	fs.DurationVar(&c.DrainTimeout, "drain-timeout", 3*time.Minute, "longest wait for the pipeline to finish a phase's work")
	fs.IntVar(&c.FanoutDevices, "fanout-devices", 100_000, "devices registered for the fan-out and paced broadcasts (e.g. 1000000)")
	fs.IntVar(&c.History, "history", 20_000, "past notifications (2 deliveries each) written to the database before the phases, for production-like query plans; 0 for none")
	fs.IntVar(&c.RegisterBatch, "register-batch", 5_000, "devices per RegisterDevices call (at most 10,000)")
	fs.IntVar(&c.RegisterClients, "register-clients", 4, "concurrent RegisterDevices calls")
	fs.IntVar(&c.LatencyRate, "latency-rate", 1_000, "notifications per second in the latency phase, each to its own user and token")
	fs.DurationVar(&c.LatencyDuration, "latency-duration", 10*time.Second, "how long the latency phase publishes")
	fs.IntVar(&c.BatchClients, "batch-clients", 4, "concurrent PublishBatch calls (500 notifications each) in the batch phase")
	fs.IntVar(&c.BatchNotifications, "batch-notifications", 50_000, "notifications the batch phase publishes (rounded up to whole batches of 500)")
	fs.IntVar(&c.SustainNotifications, "sustain-notifications", 20_000, "one-token notifications the sustain and reference phases publish as fast as Publish takes them")
	fs.IntVar(&c.PacedQuota, "paced-quota", 0, "the paced broadcasts' quota a minute, on the emulator and the app (0: half the raw FCM edge of this run, at most 0.8× the unpaced fan-out)")
	statusEvents := fs.String("status-events", "on", "on, or off: the bench database's "+schema.StatusEventsSetting+", as a deployment whose status events nobody subscribes to may set it")
	fs.IntVar(&c.AppsDevices, "apps-devices", 60_000, "devices of the apps phase's first app (the second gets half as many, and half its quota)")
	compare := fs.String("compare", "", "DIR_A,DIR_B: run the phases with the service binaries of each directory in turn (A B B A A B …), -pairs runs of each, and print their figures side by side")
	fs.IntVar(&c.Pairs, "pairs", 2, "with -compare: runs of each directory")
	if err := cli.ParseFlags(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			usage(fs, helpOut)
			return c, err
		}
		return c, usageError{err}
	}
	if fs.NArg() == 1 && fs.Arg(0) == "help" {
		usage(fs, helpOut)
		return c, flag.ErrHelp
	}
	if fs.NArg() > 0 {
		return c, usageError{fmt.Errorf("unexpected arguments %q", fs.Args())}
	}

	c.DatabaseURL = cmp.Or(getenv("DATABASE_URL"), envconfig.DefaultDatabaseURL)
	c.AMQPURL = cmp.Or(getenv("AMQP_URL"), envconfig.DefaultAMQPURL)
	c.ManagementURL = cmp.Or(getenv("RABBITMQ_MANAGEMENT_URL"), "http://guest:guest@127.0.0.1:15672")

	var errs []error
	c.Phases = map[string]bool{}
	for _, p := range strings.Split(*phases, ",") {
		p = strings.TrimSpace(p)
		if !slices.Contains(allPhases, p) {
			errs = append(errs, fmt.Errorf("-phases: unknown phase %q (want some of %s)", p, strings.Join(allPhases, ",")))
		}
		c.Phases[p] = true
	}
	switch *statusEvents {
	case "on":
	case "off":
		c.StatusEventsOff = true
	default:
		errs = append(errs, fmt.Errorf("-status-events: want on or off, got %q", *statusEvents))
	}
	positive := func(name string, v int) {
		if v <= 0 {
			errs = append(errs, fmt.Errorf("-%s: must be positive, got %d", name, v))
		}
	}
	positive("publish-clients", c.PublishClients)
	positive("fanout-devices", c.FanoutDevices)
	positive("register-clients", c.RegisterClients)
	positive("latency-rate", c.LatencyRate)
	positive("batch-clients", c.BatchClients)
	positive("batch-notifications", c.BatchNotifications)
	positive("sustain-notifications", c.SustainNotifications)
	positive("apps-devices", c.AppsDevices)
	if c.PacedQuota < 0 {
		errs = append(errs, fmt.Errorf("-paced-quota: must not be negative, got %d", c.PacedQuota))
	}
	if c.RegisterBatch < 1 || c.RegisterBatch > 10_000 {
		errs = append(errs, fmt.Errorf("-register-batch: %d is outside 1..10000", c.RegisterBatch))
	}
	for name, d := range map[string]time.Duration{"baseline-duration": c.BaselineDuration, "publish-duration": c.PublishDuration,
		"latency-duration": c.LatencyDuration, "drain-timeout": c.DrainTimeout} {
		if d <= 0 {
			errs = append(errs, fmt.Errorf("-%s: must be positive, got %s", name, d))
		}
	}
	if c.History < 0 {
		errs = append(errs, fmt.Errorf("-history: must not be negative, got %d", c.History))
	}
	if c.Warmup < 0 {
		errs = append(errs, fmt.Errorf("-warmup: must not be negative, got %s", c.Warmup))
	}
	if *compare != "" {
		errs = append(errs, c.loadCompare(fs, *compare)...)
	}

	// The sender's own loader, so the baseline uses exactly the concurrency the sender will.
	// The bench points the services at its own emulator (FCM_ENDPOINT), so the loader gets one too.
	env := envconfig.New(func(k string) string {
		if k == "FCM_ENDPOINT" {
			return "http://127.0.0.1:9099/v1"
		}
		return getenv(k)
	})
	settings := delivery.LoadSettings(env)
	var envErr error
	if err := env.Err(); err != nil {
		envErr = fmt.Errorf("service settings in the environment: %w", err)
	}
	c.FCMConcurrency = settings.MaxConcurrentSends

	c.ServiceEnv = map[string]string{}
	for _, kv := range environ {
		k, v, _ := strings.Cut(kv, "=")
		for _, p := range tuningPrefixes {
			if strings.HasPrefix(k, p) {
				c.ServiceEnv[k] = v
			}
		}
	}

	for _, dir := range []*string{&c.BinDir, &c.OutDir} {
		if abs, err := filepath.Abs(*dir); err == nil {
			*dir = abs
		}
	}
	if *compare == "" {
		errs = append(errs, missingServices("-bin", c.BinDir)...)
	}
	if len(errs) > 0 {
		// A flag's value is wrong: a usage error, exit 2, as for a flag that does not exist.
		return c, usageError{errors.Join(append(errs, envErr)...)}
	}
	return c, envErr
}

// missingServices reports the service binaries dir lacks, naming the flag that gave it.
func missingServices(flagName, dir string) []error {
	var errs []error
	for _, s := range serviceNames {
		if _, err := os.Stat(filepath.Join(dir, s)); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w (run `make build`)", flagName, err))
		}
	}
	return errs
}

// loadCompare reads -compare's two directories, checks -pairs, and keeps the flags given
// (but -compare, -pairs, -bin and -out, which the comparison sets for each run) for the runs.
func (c *config) loadCompare(fs *flag.FlagSet, value string) []error {
	var errs []error
	dirs := strings.Split(value, ",")
	if len(dirs) != 2 || dirs[0] == "" || dirs[1] == "" {
		return []error{fmt.Errorf("-compare: want two directories of service binaries, DIR_A,DIR_B, got %q", value)}
	}
	for i, d := range dirs {
		if abs, err := filepath.Abs(d); err == nil {
			d = abs
		}
		c.Compare[i] = d
		errs = append(errs, missingServices("-compare", d)...)
	}
	if c.Pairs < 1 {
		errs = append(errs, fmt.Errorf("-pairs: must be positive, got %d", c.Pairs))
	}
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "compare", "pairs", "out":
		case "bin":
			errs = append(errs, errors.New("-bin: not with -compare, which names the binaries of each run"))
		default:
			c.RunArgs = append(c.RunArgs, "-"+f.Name+"="+f.Value.String())
		}
	})
	return errs
}
