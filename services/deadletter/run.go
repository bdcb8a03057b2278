package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"time"

	"golang.org/x/sync/errgroup"

	"notify/pkg/logging"
	"notify/pkg/metrics"
	"notify/pkg/rabbit"
	"notify/pkg/schema"
	"notify/services/deadletter/internal/deadletter"
)

// run wires the deadletter service together and runs it until ctx ends. It does not
// migrate: until the producer has migrated the schema to the version this binary knows it
// waits (warning, and answering /readyz with 503) instead of consuming, so that all
// services can start in any order; it refuses a schema newer than it knows.
// On SIGTERM the consumer stops taking deliveries and lets in-flight ones finish before
// the broker connection closes; unacked ones go back to the queue.
func run(ctx context.Context, getenv func(string) string) error {
	cfg, err := loadConfig(getenv)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	log := logging.New(os.Stderr, "deadletter", cfg.LogLevel)
	if cfg.GCPercent > 0 {
		debug.SetGCPercent(cfg.GCPercent)
	}
	logging.Starting(log, cfg.Settings)
	defer logging.Stopping(ctx, log, cfg.ShutdownTimeout)()

	// pgx's default size, as before (minConns 0).
	pool, err := schema.NewPool(ctx, cfg.DatabaseURL, 0, log)
	if err != nil {
		return fmt.Errorf("DATABASE_URL: %w", err)
	}
	defer pool.Close()

	var sink deadletter.Sink
	switch {
	case cfg.SlackWebhookURL != "":
		sink = deadletter.NewWebhook(cfg.SlackWebhookURL)
	case cfg.SlackBotToken != "":
		sink = deadletter.NewBot(cfg.SlackBotToken, cfg.SlackChannel, cfg.SlackAPIURL)
	default:
		log.Warn("no SLACK_WEBHOOK_URL or SLACK_BOT_TOKEN: dead-letter alerts go to the log only")
		sink = deadletter.NewLog(log)
	}

	reg := metrics.NewRegistry()
	reg.MustRegister(metrics.NewPoolCollector(pool))
	topo := rabbit.NewTopology(cfg.Topology, nil)
	conn := rabbit.NewConn(cfg.AMQPURL, log, rabbit.ConnOptions{
		Name: "deadletter", Topology: &topo, DrainTimeout: cfg.ShutdownTimeout + 5*time.Second, Hooks: rabbit.NewMetrics(reg),
	})
	store := deadletter.NewStore(pool)
	handler := deadletter.NewHandler(store, log, reg)
	consumer := rabbit.NewConsumer(conn, topo.DeadQueue(), handler.Handle, rabbit.ConsumerOptions{
		Concurrency:     cfg.Workers,
		Prefetch:        4 * cfg.Workers,
		HandlerTimeout:  time.Minute, // a stuck database call ends and the message is requeued
		ShutdownTimeout: cfg.ShutdownTimeout,
		// A dead letter that cannot be stored waits longer than a send task: nothing is
		// waiting for it but an alert.
		MinRequeuePause: 500 * time.Millisecond,
		MaxRequeuePause: 15 * time.Second,
	})
	alerter := deadletter.NewAlerter(pool, sink, log, reg, deadletter.AlerterOptions{
		Interval:    cfg.AlertInterval,
		MinInterval: cfg.AlertMinInterval,
	})

	depths := rabbit.NewQueueDepths(conn, reg, log, 0, topo.DeadQueue())

	stopConn := conn.Start(ctx)
	defer func() { _ = stopConn() }() // early returns; the explicit call below reports the error

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return depths.Run(gctx) })
	var schemaGate schema.Gate
	g.Go(func() error {
		return schemaGate.WaitThen(gctx, pool, log, func(ctx context.Context) error {
			work, wctx := errgroup.WithContext(ctx)
			work.Go(func() error { return consumer.Run(wctx) })
			work.Go(func() error { return alerter.Run(wctx) })
			return work.Wait()
		})
	})
	g.Go(func() error {
		return metrics.NewServer(cfg.MetricsAddr, reg, log,
			metrics.Check{Name: "database", Func: store.Check},
			metrics.Check{Name: "schema", Func: schemaGate.Check},
			metrics.Check{Name: "rabbitmq", Func: conn.Check},
			metrics.Check{Name: "consumer", Func: consumer.Check},
		).Run(gctx)
	})
	return errors.Join(g.Wait(), stopConn())
}
