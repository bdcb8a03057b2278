package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"

	"notify/pkg/logging"
	"notify/pkg/metrics"
	"notify/pkg/rabbit"
	"notify/pkg/schema"
	notifyv1 "notify/proto/gen/notify/v1"
	"notify/services/producer/internal/apikey"
	"notify/services/producer/internal/jobs"
	"notify/services/producer/internal/outbox"
	"notify/services/producer/internal/server"
)

// run wires the producer together and runs it until ctx ends.
//
// Shutdown order matters: on ctx's end the gRPC server drains in-flight RPCs and the relay
// finishes its batch first; only then is the broker connection closed, so nothing the relay
// claimed is left half-published.
func run(ctx context.Context, getenv func(string) string) error {
	cfg, err := loadConfig(getenv)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	log := logging.New(os.Stderr, "producer", cfg.LogLevel)
	// TLS files are checked before anything waits for the database, so a bad path fails fast.
	serverOpts, err := grpcServerOptions(cfg, log)
	if err != nil {
		return err
	}

	pool, err := pgxpool.New(ctx, cfg.DatabaseURL)
	if err != nil {
		return fmt.Errorf("DATABASE_URL: %w", err)
	}
	defer pool.Close()
	if err := waitForDatabase(ctx, pool); err != nil {
		return err
	}
	if _, err := schema.Migrate(ctx, pool, log); err != nil {
		return fmt.Errorf("migrate database: %w", err)
	}

	reg := metrics.NewRegistry()
	topo := rabbit.NewTopology(cfg.Topology, nil)
	conn := rabbit.NewConn(cfg.AMQPURL, log, rabbit.ConnOptions{Name: "producer", Topology: &topo, DrainTimeout: cfg.ShutdownTimeout})
	relay := outbox.NewRelay(pool, rabbit.NewPublisher(conn, topo.Exchange(), rabbit.PublisherOptions{}), log, reg, outbox.Options{
		BatchSize:    cfg.OutboxBatchSize,
		PollInterval: cfg.OutboxPollInterval,
		Retention:    cfg.OutboxRetention,
		Ready:        conn.Ready,
	})

	keys := apikey.NewVerifier(apikey.NewStore(pool), cfg.APIKeyCacheTTL, log)
	warnWithoutAdminKey(ctx, pool, log)
	auth := server.NewAuth(keys, log, reg)
	runner := jobs.NewRunner(pool, log, reg,
		jobs.StaleTokens(cfg.TokenStaleAfter, cfg.TokenSweepBatch, cfg.TokenSweepInterval, log, reg),
		jobs.Redrive(jobs.RedriveOptions{After: cfg.RedriveAfter, MaxRetryDelay: cfg.RetryMaxDelay, Batch: 100},
			cfg.RedriveInterval, log, reg),
	)

	api, err := newGRPCServer(cfg.GRPCAddr, cfg.ShutdownTimeout, log,
		append(serverOpts, grpc.ChainUnaryInterceptor(auth.Unary()), grpc.ChainStreamInterceptor(auth.Stream()))...)
	if err != nil {
		return err
	}
	notifyv1.RegisterNotificationServiceServer(api, server.NewNotifications(pool, log, reg, relay.Wake))
	notifyv1.RegisterDeviceServiceServer(api, server.NewDevices(pool, log, reg))
	notifyv1.RegisterAdminServiceServer(api, server.NewAdmin(pool, log, keys, relay.Wake))

	connCtx, stopConn := context.WithCancel(context.WithoutCancel(ctx))
	defer stopConn()
	connDone := make(chan error, 1)
	go func() { connDone <- conn.Run(connCtx) }()

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return relay.Run(gctx) })
	g.Go(func() error { return keys.Run(gctx) })
	g.Go(func() error { return runner.Run(gctx) })
	g.Go(func() error {
		return metrics.NewServer(cfg.MetricsAddr, reg, func(ctx context.Context) error { return pool.Ping(ctx) }, log).Run(gctx)
	})
	g.Go(func() error { return api.Run(gctx) })
	err = g.Wait()
	stopConn()
	if connErr := <-connDone; connErr != nil && !errors.Is(connErr, context.Canceled) {
		err = errors.Join(err, fmt.Errorf("rabbitmq connection: %w", connErr))
	}
	return err
}

// waitForDatabase gives a database that starts together with the producer a minute to
// answer, instead of failing at once.
func waitForDatabase(ctx context.Context, pool *pgxpool.Pool) error {
	deadline := time.Now().Add(time.Minute)
	for {
		err := pool.Ping(ctx)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("DATABASE_URL: database not reachable: %w", err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// warnWithoutAdminKey tells the operator how to make the first admin key: without one,
// nobody can use AdminService.
func warnWithoutAdminKey(ctx context.Context, pool *pgxpool.Pool, log *slog.Logger) {
	var exists bool
	err := pool.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM api_keys WHERE role = 'admin' AND revoked_at IS NULL)").Scan(&exists)
	if err == nil && !exists {
		log.Warn("no active admin API key; create one with: producer keys create NAME --role admin (uses DATABASE_URL)")
	}
}
