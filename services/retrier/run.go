package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"time"

	"golang.org/x/sync/errgroup"

	"notify/pkg/delivery"
	"notify/pkg/fcm"
	"notify/pkg/logging"
	"notify/pkg/metrics"
	"notify/pkg/rabbit"
	"notify/pkg/schema"
	"notify/services/retrier/internal/retrier"
)

// run wires the retrier together and consumes the retry queue until ctx ends. It connects to
// PostgreSQL, FCM and RabbitMQ (declaring the topology with the configured wait levels, so
// that its hand-offs to the next wait level are routable). On SIGTERM the consumer stops
// taking deliveries and lets in-flight ones finish (or hands them back) before the broker
// connection closes.
func run(ctx context.Context, getenv func(string) string) error {
	cfg, err := loadConfig(getenv)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	log := logging.New(os.Stderr, "retrier", cfg.LogLevel)
	if cfg.GCPercent > 0 {
		debug.SetGCPercent(cfg.GCPercent)
	}
	logging.Starting(log, cfg.Settings)
	defer logging.Stopping(ctx, log, cfg.ShutdownTimeout)()
	for _, app := range cfg.Delivery.Apps {
		if app.FCM.CredentialsFile == "" {
			log.Warn("sending to an FCM emulator, not to Firebase", "app", app.Name, "endpoint", app.FCM.Endpoint)
		}
	}
	// Room for every worker's round trips, two at once.
	pool, err := schema.NewPool(ctx, cfg.DatabaseURL, int32(2*cfg.Workers+2), log)
	if err != nil {
		return fmt.Errorf("DATABASE_URL: %w", err)
	}
	defer pool.Close()
	apps, err := fcm.NewApps(ctx, cfg.Delivery.Apps)
	if err != nil {
		return fmt.Errorf("fcm: %w", err)
	}
	log.Info("sending for apps", "apps", apps.String())

	reg := metrics.NewRegistry()
	reg.MustRegister(metrics.NewPoolCollector(pool))
	topo := cfg.Delivery.Topology()
	conn := rabbit.NewConn(cfg.AMQPURL, log, rabbit.ConnOptions{
		Name: "retrier", Topology: &topo, DrainTimeout: cfg.ShutdownTimeout + 5*time.Second, Hooks: rabbit.NewMetrics(reg),
	})
	store := delivery.NewStore(pool)
	pub := rabbit.NewPublisher(conn, topo.Exchange(), rabbit.PublisherOptions{})
	deliverer := delivery.NewDeliverer(store, nil, pub, topo, log, reg, cfg.Delivery.AppOptions(apps, pool, reg))
	handler := retrier.NewHandler(store, deliverer, log, reg).WithTaskTimeout(cfg.TaskTimeout)
	consumer := rabbit.NewBatchConsumer(conn, topo.RetryQueue(), handler.HandleBatch, rabbit.ConsumerOptions{
		BatchSize:       cfg.BatchSize,
		BatchLinger:     cfg.BatchLinger,
		Concurrency:     cfg.Workers,
		Prefetch:        cfg.Prefetch,
		ShutdownTimeout: cfg.ShutdownTimeout,
	})

	depths := rabbit.NewQueueDepths(conn, reg, log, 0, topo.RetryQueues()...)

	stopConn := conn.Start(ctx)
	defer func() { _ = stopConn() }() // early returns; the explicit call below reports the error

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return depths.Run(gctx) })
	// The producer (or `producer migrate up`) owns the schema: wait for it, and refuse one
	// newer than this binary.
	var schemaGate schema.Gate
	g.Go(func() error { return schemaGate.WaitThen(gctx, pool, log, consumer.Run) })
	g.Go(func() error {
		return metrics.NewServer(cfg.MetricsAddr, reg, log,
			metrics.Check{Name: "database", Func: pool.Ping},
			metrics.Check{Name: "schema", Func: schemaGate.Check},
			metrics.Check{Name: "rabbitmq", Func: conn.Check},
			metrics.Check{Name: "consumer", Func: consumer.Check},
		).Run(gctx)
	})
	return errors.Join(g.Wait(), stopConn())
}
