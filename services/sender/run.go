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
	"notify/services/sender/internal/sender"
)

// packBatch is how many packs of send tasks the sender handles as one batch at most.
const packBatch = 4

// run wires the sender together and consumes the send queue until ctx ends. It connects to
// PostgreSQL, FCM and RabbitMQ (declaring the topology with the configured wait levels, so
// that its hand-offs to the retry wait queues are routable). On SIGTERM the consumer stops
// taking deliveries and lets in-flight ones finish (or hands them back) before the broker
// connection closes.
func run(ctx context.Context, getenv func(string) string) error {
	cfg, err := loadConfig(getenv)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	log := logging.New(os.Stderr, "sender", cfg.LogLevel)
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
	// Room for every worker's round trips, two at once, of both consumers (send tasks and
	// packs), and a large notification's chunks.
	pool, err := schema.NewPool(ctx, cfg.DatabaseURL, int32(4*cfg.Workers+cfg.ChunkConcurrency), log)
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
		Name: "sender", Topology: &topo, DrainTimeout: cfg.ShutdownTimeout + 5*time.Second, Hooks: rabbit.NewMetrics(reg),
	})
	store := delivery.NewStore(pool)
	pub := rabbit.NewPublisher(conn, topo.Exchange(), rabbit.PublisherOptions{})
	deliverer := delivery.NewDeliverer(store, nil, pub, topo, log, reg, cfg.Delivery.AppOptions(apps, pool, reg))
	handler := sender.NewHandler(store, deliverer, log, reg, cfg.ChunkConcurrency).WithTaskTimeout(cfg.TaskTimeout).WithPacks(pub, reg)
	consumer := rabbit.NewBatchConsumer(conn, topo.SendQueue(), handler.HandleBatch, rabbit.ConsumerOptions{
		Concurrency:     cfg.Workers,
		Prefetch:        cfg.Prefetch,
		BatchSize:       cfg.BatchSize,
		BatchLinger:     cfg.BatchLinger,
		ShutdownTimeout: cfg.ShutdownTimeout,
	})
	// Packs of send tasks (the relay's, OUTBOX_PACK_SIZE): a batch takes up to packBatch
	// packs, each of a relay round's tasks.
	packs := rabbit.NewBatchConsumer(conn, topo.PackedSendQueue(), handler.HandlePacks, rabbit.ConsumerOptions{
		Concurrency:     cfg.Workers,
		Prefetch:        2 * packBatch * cfg.Workers,
		BatchSize:       packBatch,
		BatchLinger:     cfg.BatchLinger,
		ShutdownTimeout: cfg.ShutdownTimeout,
	})

	depths := rabbit.NewQueueDepths(conn, reg, log, 0, topo.SendQueue(), topo.PackedSendQueue())

	stopConn := conn.Start(ctx)
	defer func() { _ = stopConn() }() // early returns; the explicit call below reports the error

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return depths.Run(gctx) })
	// The producer (or `producer migrate up`) owns the schema: wait for it, and refuse one
	// newer than this binary.
	var schemaGate schema.Gate
	g.Go(func() error {
		return schemaGate.WaitThen(gctx, pool, log, func(ctx context.Context) error {
			var both errgroup.Group
			both.Go(func() error { return consumer.Run(ctx) })
			both.Go(func() error { return packs.Run(ctx) })
			return both.Wait()
		})
	})
	g.Go(func() error {
		return metrics.NewServer(cfg.MetricsAddr, reg, log,
			metrics.Check{Name: "database", Func: pool.Ping},
			metrics.Check{Name: "schema", Func: schemaGate.Check},
			metrics.Check{Name: "rabbitmq", Func: conn.Check},
			metrics.Check{Name: "consumer", Func: consumer.Check},
			metrics.Check{Name: "packs", Func: packs.Check},
		).Run(gctx)
	})
	return errors.Join(g.Wait(), stopConn())
}
