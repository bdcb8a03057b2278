package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	"notify/pkg/delivery"
	"notify/pkg/fcm"
	"notify/pkg/logging"
	"notify/pkg/metrics"
	"notify/pkg/rabbit"
	"notify/services/retrier/internal/retrier"
)

// run wires the retrier together and runs it until ctx ends. On SIGTERM the consumer stops
// taking deliveries and lets in-flight tasks finish (or hands them back) before the broker
// connection closes.
func run(ctx context.Context, getenv func(string) string) error {
	cfg, err := loadConfig(getenv)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	log := logging.New(os.Stderr, "retrier", cfg.LogLevel)
	if cfg.Delivery.FCM.CredentialsFile == "" {
		log.Warn("sending to an FCM emulator, not to Firebase", "endpoint", cfg.Delivery.FCM.Endpoint)
	}

	pool, err := pgxpool.New(ctx, cfg.DatabaseURL)
	if err != nil {
		return fmt.Errorf("DATABASE_URL: %w", err)
	}
	defer pool.Close()
	fcmClient, err := fcm.New(ctx, cfg.Delivery.FCM)
	if err != nil {
		return fmt.Errorf("fcm: %w", err)
	}

	reg := metrics.NewRegistry()
	topo := cfg.Delivery.Topology()
	conn := rabbit.NewConn(cfg.AMQPURL, log, rabbit.ConnOptions{Name: "retrier", Topology: &topo, DrainTimeout: cfg.ShutdownTimeout + 5e9})
	pub := rabbit.NewPublisher(conn, topo.Exchange(), rabbit.PublisherOptions{})
	store := delivery.NewStore(pool)
	deliverer := delivery.NewDeliverer(store, fcmClient, pub, topo, log, reg, delivery.Options{
		MaxAttempts:        cfg.Delivery.MaxAttempts,
		MaxConcurrentSends: cfg.Delivery.MaxConcurrentSends,
	})
	handler := retrier.NewHandler(store, deliverer, log, reg)
	consumer := rabbit.NewConsumer(conn, topo.RetryQueue(), handler.Handle, rabbit.ConsumerOptions{
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
		return metrics.NewServer(cfg.MetricsAddr, reg, func(ctx context.Context) error { return pool.Ping(ctx) }, log).Run(gctx)
	})
	err = g.Wait()
	stopConn()
	if connErr := <-connDone; connErr != nil && !errors.Is(connErr, context.Canceled) {
		err = errors.Join(err, fmt.Errorf("rabbitmq connection: %w", connErr))
	}
	return err
}
