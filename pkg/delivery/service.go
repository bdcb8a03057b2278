package delivery

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"notify/pkg/fcm"
	"notify/pkg/logging"
	"notify/pkg/metrics"
	"notify/pkg/rabbit"
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

// HandlerFunc builds a service's queue handler from the shared parts. shutdown is closed
// when the service starts to stop: long tasks stop starting new work and hand the rest
// back to the queue.
type HandlerFunc func(store *Store, d *Deliverer, log *slog.Logger, reg prometheus.Registerer, shutdown <-chan struct{}) rabbit.Handler

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
	topo := cfg.Settings.Topology()
	conn := rabbit.NewConn(cfg.AMQPURL, log, rabbit.ConnOptions{Name: cfg.Name, Topology: &topo, DrainTimeout: cfg.ShutdownTimeout + 5*time.Second})
	pub := rabbit.NewPublisher(conn, topo.Exchange(), rabbit.PublisherOptions{})
	store := NewStore(pool)
	deliverer := NewDeliverer(store, fcmClient, pub, topo, log, reg, Options{
		MaxAttempts:        cfg.Settings.MaxAttempts,
		MaxConcurrentSends: cfg.Settings.MaxConcurrentSends,
	})
	consumer := rabbit.NewConsumer(conn, queue(topo), newHandler(store, deliverer, log, reg, ctx.Done()), rabbit.ConsumerOptions{
		Concurrency:     cfg.Workers,
		Prefetch:        cfg.Prefetch,
		ShutdownTimeout: cfg.ShutdownTimeout,
	})

	connCtx, stopConn := context.WithCancel(context.WithoutCancel(ctx))
	defer stopConn()
	connDone := make(chan error, 1)
	go func() { connDone <- conn.Run(connCtx) }()

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return consumer.Run(gctx) })
	g.Go(func() error {
		return metrics.NewServer(cfg.MetricsAddr, reg, log,
			metrics.Check{Name: "database", Func: pool.Ping},
			metrics.Check{Name: "rabbitmq", Func: conn.Check},
			metrics.Check{Name: "consumer", Func: consumer.Check},
		).Run(gctx)
	})
	err = g.Wait()
	stopConn()
	if connErr := <-connDone; connErr != nil && !errors.Is(connErr, context.Canceled) {
		err = errors.Join(err, fmt.Errorf("rabbitmq connection: %w", connErr))
	}
	return err
}

// Consumer results shared by the sender and the retrier: they decide how a delivery is
// settled.
const (
	ResultRequeued = "requeued" // something failed on the way (database, broker): back to the queue
	ResultRejected = "rejected" // could not even be dead-lettered explicitly: the broker's dead-letter route
)

// Settler settles deliveries according to the handler's result, and paces requeues while
// something the handler depends on (PostgreSQL, the broker) keeps failing: without the
// pause a requeued message comes straight back, the handler spins, and the queue's
// x-delivery-limit dead-letters healthy notifications during a short database outage.
type Settler struct {
	mu       sync.Mutex
	failures int
	// MaxPause caps the pause before a requeue (default 30s); it doubles from 250ms with
	// each consecutive failure and resets on the first success.
	MaxPause time.Duration
}

// Settle acks, requeues or rejects d according to result, and logs what it did with
// anything that went wrong. A delivery whose channel died cannot be settled; the broker
// redelivers it and the handlers skip what was already settled.
func (s *Settler) Settle(ctx context.Context, log *slog.Logger, d *rabbit.Delivery, result string, err error) {
	var settleErr error
	switch result {
	case ResultRequeued:
		if err != nil {
			pause := s.failed()
			log.Warn("task failed; handing it back to the queue", "err", err, "pause", pause)
			t := time.NewTimer(pause)
			select {
			case <-ctx.Done():
			case <-t.C:
			}
			t.Stop()
		} else {
			log.Info("handing task back to the queue")
		}
		settleErr = d.Nack(true)
	case ResultRejected:
		log.Error("task could not be dead-lettered explicitly; rejecting it to the broker's dead-letter route", "err", err)
		settleErr = d.Reject()
	default:
		s.succeeded()
		settleErr = d.Ack()
	}
	if settleErr != nil {
		log.Warn("could not settle task; it will be redelivered", "result", result, "err", settleErr)
	}
}

func (s *Settler) failed() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	pause := min(250*time.Millisecond<<min(s.failures, 16), cmp.Or(s.MaxPause, 30*time.Second))
	s.failures++
	return pause
}

func (s *Settler) succeeded() {
	s.mu.Lock()
	s.failures = 0
	s.mu.Unlock()
}
