package delivery

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"notify/pkg/fcm"
	"notify/pkg/logging"
	"notify/pkg/metrics"
	"notify/pkg/rabbit"
	"notify/pkg/schema"
)

// ServiceEnv names one delivery consumer service's own variables and defaults.
type ServiceEnv struct {
	Name        string // the service, e.g. "sender"
	MetricsAddr string // METRICS_ADDR's default
	WorkersVar  string // e.g. SEND_WORKERS: tasks handled at once
	PrefetchVar string // e.g. SEND_PREFETCH: deliveries the broker sends ahead
}

// ServiceConfig is everything a delivery consumer service (the sender, the retrier) reads
// from the environment, apart from its own extras.
type ServiceConfig struct {
	Name            string
	DatabaseURL     string
	AMQPURL         string
	LogLevel        slog.Level
	MetricsAddr     string
	Settings        Settings
	Workers         int
	Prefetch        int
	ShutdownTimeout time.Duration // SHUTDOWN_TIMEOUT: how long in-flight tasks may finish on SIGTERM
}

// Env reads variables for a service's config.go, collecting every problem, each naming its
// variable.
type Env struct {
	getenv func(string) string
	Errs   []error
}

// NewEnv reads through getenv.
func NewEnv(getenv func(string) string) *Env { return &Env{getenv: getenv} }

// String returns the variable or its default.
func (e *Env) String(name, def string) string { return cmp.Or(e.getenv(name), def) }

// Int returns the variable as an integer in lo..hi, or its default.
func (e *Env) Int(name string, def, lo, hi int) int {
	v := e.getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	switch {
	case err != nil:
		e.Errs = append(e.Errs, fmt.Errorf("%s: %w", name, err))
	case n < lo || n > hi:
		e.Errs = append(e.Errs, fmt.Errorf("%s: %d is outside %d..%d", name, n, lo, hi))
	}
	return n
}

// Duration returns the variable as a Go duration of at least min, or its default.
func (e *Env) Duration(name string, def, min time.Duration) time.Duration {
	v := e.getenv(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	switch {
	case err != nil:
		e.Errs = append(e.Errs, fmt.Errorf("%s: %w", name, err))
	case d < min:
		e.Errs = append(e.Errs, fmt.Errorf("%s: %s is below the minimum %s", name, d, min))
	}
	return d
}

// Err joins every problem found.
func (e *Env) Err() error { return errors.Join(e.Errs...) }

// LoadServiceConfig reads the configuration every delivery consumer service shares.
func LoadServiceConfig(e *Env, s ServiceEnv) ServiceConfig {
	c := ServiceConfig{
		Name:        s.Name,
		DatabaseURL: e.String("DATABASE_URL", "postgres://notify:notify@127.0.0.1:5432/notify?sslmode=disable"),
		AMQPURL:     e.String("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
		MetricsAddr: e.String("METRICS_ADDR", s.MetricsAddr),
	}
	var err error
	if c.LogLevel, err = logging.ParseLevel(e.getenv("LOG_LEVEL")); err != nil {
		e.Errs = append(e.Errs, fmt.Errorf("LOG_LEVEL: %w", err))
	}
	if c.Settings, err = LoadSettings(e.getenv); err != nil {
		e.Errs = append(e.Errs, err)
	}
	c.Workers = e.Int(s.WorkersVar, 4, 1, 256)
	c.Prefetch = e.Int(s.PrefetchVar, 2*c.Workers, 1, 10000)
	c.ShutdownTimeout = e.Duration("SHUTDOWN_TIMEOUT", 30*time.Second, 0)
	return c
}

// HandlerFunc builds a service's queue handler from the shared parts.
type HandlerFunc func(store *Store, d *Deliverer, log *slog.Logger, reg prometheus.Registerer) rabbit.Handler

// RunService runs a delivery consumer until ctx ends: it connects to PostgreSQL, FCM and
// RabbitMQ (declaring the topology with the configured wait levels), consumes the queue that
// queue names with the handler newHandler builds, and serves metrics. On SIGTERM the
// consumer stops taking deliveries and lets in-flight ones finish (or hands them back)
// before the broker connection closes.
func RunService(ctx context.Context, cfg ServiceConfig, queue func(rabbit.Topology) string, newHandler HandlerFunc) error {
	log := logging.New(os.Stderr, cfg.Name, cfg.LogLevel)
	if cfg.Settings.FCM.CredentialsFile == "" {
		log.Warn("sending to an FCM emulator, not to Firebase", "endpoint", cfg.Settings.FCM.Endpoint)
	}
	pool, err := pgxpool.New(ctx, cfg.DatabaseURL)
	if err != nil {
		return fmt.Errorf("DATABASE_URL: %w", err)
	}
	defer pool.Close()
	fcmClient, err := fcm.New(ctx, cfg.Settings.FCM)
	if err != nil {
		return fmt.Errorf("fcm: %w", err)
	}

	reg := metrics.NewRegistry()
	reg.MustRegister(metrics.NewPoolCollector(pool))
	topo := cfg.Settings.Topology()
	conn := rabbit.NewConn(cfg.AMQPURL, log, rabbit.ConnOptions{
		Name: cfg.Name, Topology: &topo, DrainTimeout: cfg.ShutdownTimeout + 5*time.Second, Hooks: rabbit.NewMetrics(reg),
	})
	pub := rabbit.NewPublisher(conn, topo.Exchange(), rabbit.PublisherOptions{})
	store := NewStore(pool)
	deliverer := NewDeliverer(store, fcmClient, pub, topo, log, reg, Options{
		MaxAttempts:        cfg.Settings.MaxAttempts,
		MaxConcurrentSends: cfg.Settings.MaxConcurrentSends,
	})
	consumer := rabbit.NewConsumer(conn, queue(topo), newHandler(store, deliverer, log, reg), rabbit.ConsumerOptions{
		Concurrency:     cfg.Workers,
		Prefetch:        cfg.Prefetch,
		ShutdownTimeout: cfg.ShutdownTimeout,
	})

	stopConn := conn.Start(ctx)
	defer stopConn()

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		// The producer (or `producer migrate up`) owns the schema: wait for it, and refuse
		// one newer than this binary.
		if err := schema.Wait(gctx, pool, log, 2*time.Second); err != nil {
			if gctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("database schema: %w", err)
		}
		return consumer.Run(gctx)
	})
	g.Go(func() error {
		return metrics.NewServer(cfg.MetricsAddr, reg, log,
			metrics.Check{Name: "database", Func: pool.Ping},
			metrics.Check{Name: "rabbitmq", Func: conn.Check},
			metrics.Check{Name: "consumer", Func: consumer.Check},
		).Run(gctx)
	})
	return errors.Join(g.Wait(), stopConn())
}
